"""What a training run leaves in its workdir besides checkpoints: metrics
(TensorBoard and metrics.jsonl), labelled sample grids, runs.jsonl, the
skipped records, and the stop on non-finite values."""

import datetime
import json
import os

import jax
import numpy as np
from absl import logging
from PIL import Image

from fit_jax.data import pixels
from fit_jax.models import generator_layout
from fit_jax.runtime import atomic

GRID_COLUMNS = ("original", "anonymized", "2nd password", "wrong recovery", "recovery")


def sample_grid(images: dict[str, np.ndarray], original: np.ndarray) -> np.ndarray:
  """A labelled uint8 grid [12 + n*H, 5*W, 3]: one row per image, columns
  GRID_COLUMNS (original, anonymized, anonymized with a second password,
  recovered with a wrong password, recovered), under a strip naming them."""
  from PIL import ImageDraw  # noqa: PLC0415

  order = [original, images["anon"], images["anon2"], images["wrong"], images["recon"]]
  rows = np.concatenate([np.concatenate(list(col), axis=0) for col in order], axis=1)
  grid = pixels.to_uint8(rows)
  width = original.shape[2]
  strip = Image.new("RGB", (grid.shape[1], 12), (255, 255, 255))
  draw = ImageDraw.Draw(strip)
  for i, name in enumerate(GRID_COLUMNS):
    # PIL's built-in bitmap font: ~6 px a character, so narrow columns
    # get a shortened name rather than text over their neighbour.
    label = name if len(name) * 6 <= width else name[: max(1, width // 6 - 1)] + "."
    draw.text((i * width + 2, 1), label, fill=(0, 0, 0))
  return np.concatenate([np.asarray(strip), grid], axis=0)


_GROUPS = {
  "g": "generator group (G and the password head)",
  "d": "discriminator group (D and the recognizer)",
}


def check_finite(metrics: dict[str, float], first: int, last: int) -> None:
  """Stops on a non-finite loss term, gradient norm or parameter norm of
  the logging window of steps [first, last], naming the optimizer group
  (the big_vision/MaxText guard: the window's means carry any NaN)."""
  bad = sorted(k for k, v in metrics.items() if not np.isfinite(v))
  if not bad:
    return
  steps = f"step {last}" if first == last else f"steps {first}-{last}"
  groups = sorted({_GROUPS.get(k.split("/")[0], "metrics") for k in bad})
  raise FloatingPointError(
    f"non-finite values in {steps}, {' and '.join(groups)}: {', '.join(bad)} "
    f"(checkpoints up to step {first - 1} were checked finite)"
  )


def write_skipped(workdir: str, skipped: dict[str, str]) -> None:
  """workdir/skipped_records.txt: each record skipped so far (on_bad_record
  = 'skip') and why, one per line, so none is dropped silently."""
  lines = "".join(f"{path}\t{reason}\n" for path, reason in sorted(skipped.items()))
  atomic.write_text(os.path.join(workdir, "skipped_records.txt"), lines)


def keep_metrics_up_to(workdir: str, step: int) -> None:
  """Drops metrics.jsonl records past the restored step: the resumed run
  logs those steps again, and each step keeps one line."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.isfile(path):
    return
  with open(path) as f:
    lines = [line for line in f if line.strip()]
  kept = [line for line in lines if json.loads(line).get("step", 0) <= step]
  if len(kept) != len(lines):
    atomic.write_text(path, "".join(kept))


def record_run(workdir: str, config, models, mesh, first: int, num_steps: int) -> None:
  """Appends what this start of training runs to workdir/runs.jsonl: a run
  resumed under another config, JAX or machine stays traceable, and the
  generator layout resolved for this backend (the config says "auto") is
  named."""
  layout = generator_layout.of(models.generator)
  logging.info("generator layout on %s: %s", jax.default_backend(), layout)
  record = {
    "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    "start_step": first,
    "num_steps": num_steps,
    "jax": jax.__version__,
    "backend": jax.default_backend(),
    "device_kind": jax.devices()[0].device_kind,
    "num_devices": mesh.size,
    "num_processes": jax.process_count(),
    "generator_layout": layout,
    "config": json.loads(config.to_json_best_effort()),
  }
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "runs.jsonl"), "a") as f:
    f.write(json.dumps(record) + "\n")


class LoggingWriter:
  """Scalars to the log only (config.train.tensorboard=False): for machines
  without TensorFlow, which clu's TensorBoard writer needs. metrics.jsonl
  and the PNG sample grids are written either way."""

  def write_scalars(self, step: int, scalars: dict[str, float]) -> None:
    logging.info("step %d: %s", step, ", ".join(f"{k}={v:.5g}" for k, v in sorted(scalars.items())))

  def write_images(self, step: int, images) -> None:
    del step, images

  def flush(self) -> None:
    pass


def metric_writer(config, workdir: str):
  if not config.train.get("tensorboard", True):
    return LoggingWriter()
  from clu import metric_writers  # noqa: PLC0415  (TensorFlow)

  return metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)


def log_window(
  writer,
  workdir: str,
  data,
  window: list[dict],
  done: int,
  first: int,
  num_steps: int,
  elapsed: float,
) -> None:
  """Logs the means of a logging window's metrics (host copies) at step
  `done`: TensorBoard or the log, and one metrics.jsonl line (process 0);
  stops on a non-finite value (check_finite)."""
  means = {k: float(np.mean([m[k] for m in window])) for k in window[0]}
  check_finite(means, done - len(window) + 1, done)
  skipped = getattr(data, "skipped", {})
  means["data/skipped_records"] = float(len(skipped))
  if skipped and jax.process_index() == 0:
    write_skipped(workdir, skipped)
  means["steps_per_s"] = (done - first) / max(elapsed, 1e-9)
  means["eta_s"] = (num_steps - done) / max(means["steps_per_s"], 1e-9)
  writer.write_scalars(done, means)
  if jax.process_index() == 0:
    # A plain-text record too (exact float32 values, one JSON per line).
    with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
      f.write(
        json.dumps(
          {"step": done, **{k: v for k, v in means.items() if k not in ("steps_per_s", "eta_s")}}
        )
        + "\n"
      )


def write_grid(writer, workdir: str, step: int, generated: dict, originals, n: int) -> None:
  """The first n sample images as a labelled grid: to the writer and to
  workdir/samples/step_<step>.png."""
  grid = sample_grid(
    {k: np.asarray(v)[:n] for k, v in generated.items()}, np.asarray(originals)[:n]
  )
  writer.write_images(step, {"samples": grid[None]})
  path = os.path.join(workdir, "samples", f"step_{step:07d}.png")
  atomic.write_atomically(path, lambda p: Image.fromarray(grid).save(p, "PNG"))
