"""What a GPU's layout measurements decide: the GPU's layout entry, and
whether the speed targets are met.

  python -m benchmarks.layout_verdict results.jsonl [platform]   # one JSON object

(platform: whose BY_PLATFORM entry is the baseline; gpu unless a CPU dry
run of the script is read.)

Reads the lines benchmarks/gpu_layouts.sh writes (benchmarks.benchmark's JSON,
each with its run's name; a failed run's {"run", "rc", "error"}) and applies
the rule generator_layout states, so that whoever holds a GPU acts on its
figures without re-deriving them by hand:
- The baseline is the first bfloat16 run, timed in both modes, whose layout
  is the current BY_PLATFORM["gpu"] entry.
- A candidate (another bfloat16 layout timed in both modes) wins only by
  beating the baseline in training and in inference; of several winners the
  largest geometric mean of the two speedups is chosen.
- folded_trunk_padding only changes folded inference, so an inference-only
  run that differs from the chosen layout in it alone is judged on
  inference: faster, it joins the entry.
The speed targets: bf16 training at batch 48, peak memory at most
half the authors' 32.5 GiB, inference at batch 256, float32 still running.
"""

import json
import math
import sys
from collections.abc import Iterable

from fit_jax.models import generator_layout

TARGETS = {
  "train_images_per_s": (">=", 540.0),
  "train_peak_gib": ("<=", 32.5 / 2),
  "infer_images_per_s": (">=", 16_700.0),
}
_GIB = 2**30


def runs_of(lines: Iterable[str]) -> tuple[dict, dict]:
  """(runs, failed): per run name its dtype, layout and training and folded
  inference figures; per failed run its error."""
  runs: dict[str, dict] = {}
  failed: dict[str, str] = {}
  for number, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except json.JSONDecodeError as e:
      raise ValueError(f"line {number}: not JSON ({e.msg})") from e
    name = record.get("run")
    if name is None:
      raise ValueError(f"line {number}: no 'run' field (not a gpu_layouts.sh line)")
    if "error" in record:
      failed[name] = record["error"]
      continue
    mode = record.get("mode")
    if mode in ("train_iteration", "generator_inference"):
      missing = [k for k in ("variant", "images_per_s", "dtype", "layout") if k not in record]
      if missing:
        raise ValueError(f"line {number} (run {name!r}, {mode}): no {missing} field")
    if mode == "train_iteration" and record["variant"] == "fused":
      peak = record.get("peak_memory_bytes")
      figures = {
        "train_images_per_s": record["images_per_s"],
        "train_peak_gib": peak / _GIB if peak is not None else None,
        "train_finite": record.get("finite_loss", False),
      }
    elif mode == "generator_inference" and record["variant"] == "folded":
      figures = {
        "infer_images_per_s": record["images_per_s"],
        "infer_finite": record.get("finite_output", False),
      }
    else:
      continue  # profiles, other variants
    run = runs.setdefault(name, {"dtype": record["dtype"], "layout": record["layout"]})
    run.update(figures)
  return runs, failed


def _timed_in_both(run: dict) -> bool:
  return (
    run.get("train_finite", False) and run.get("infer_finite", False) and run["dtype"] == "bfloat16"
  )


def verdict(lines: Iterable[str], current: dict | None = None) -> dict:
  """The decision the lines support (see the module docstring).

  Raises:
    ValueError: a line is not a gpu_layouts.sh record, or no bfloat16 run
      of the current layout was timed in both modes (nothing to compare to).
  """
  current = dict(current or generator_layout.BY_PLATFORM["gpu"])
  runs, failed = runs_of(lines)
  baseline = next(
    (name for name, run in runs.items() if _timed_in_both(run) and run["layout"] == current), None
  )
  if baseline is None:
    raise ValueError(
      f"no bfloat16 run of the current layout {current} was timed in "
      f"both modes; runs: {sorted(runs)}, failed: {sorted(failed)}"
    )
  base = runs[baseline]

  def speedups(run):
    return (
      run["train_images_per_s"] / base["train_images_per_s"],
      run["infer_images_per_s"] / base["infer_images_per_s"],
    )

  winners = [
    name
    for name, run in runs.items()
    if name != baseline
    and _timed_in_both(run)
    and run["layout"] != current
    and min(speedups(run)) > 1
  ]
  chosen = max(winners, key=lambda n: math.prod(speedups(runs[n])), default=baseline)
  entry = dict(runs[chosen]["layout"])
  figures = {k: runs[chosen].get(k) for k in TARGETS}
  figures_from = {"train": chosen, "infer": chosen}
  for name, run in runs.items():
    layout = run["layout"]
    if (
      run["dtype"] == "bfloat16"
      and run.get("infer_finite")
      and "train_finite" not in run
      and layout["folded_trunk_padding"] != entry["folded_trunk_padding"]
      and {**layout, "folded_trunk_padding": entry["folded_trunk_padding"]} == entry
      and run["infer_images_per_s"] > figures["infer_images_per_s"]
    ):
      entry["folded_trunk_padding"] = layout["folded_trunk_padding"]
      figures["infer_images_per_s"] = run["infer_images_per_s"]
      figures_from["infer"] = name

  def met(name):
    sign, target = TARGETS[name]
    value = figures[name]
    if value is None:
      return None
    return value >= target if sign == ">=" else value <= target

  float32 = {name: run for name, run in runs.items() if run["dtype"] == "float32"}
  return {
    "baseline": baseline,
    "chosen": figures_from,
    "entry": entry,
    "entry_changes": entry != current,
    "speedup_over_baseline": {
      "train": round(figures["train_images_per_s"] / base["train_images_per_s"], 4),
      "infer": round(figures["infer_images_per_s"] / base["infer_images_per_s"], 4),
    },
    "targets": {
      name: {"target": f"{sign} {target:g}", "measured": figures[name], "met": met(name)}
      for name, (sign, target) in TARGETS.items()
    },
    "float32_runs": {
      name: run.get("train_finite", False) or run.get("infer_finite", False)
      for name, run in float32.items()
    },
    "all_targets_met": all(met(name) for name in TARGETS)
    and any(run.get("train_finite") and run.get("infer_finite") for run in float32.values()),
    "runs": runs,
    "failed": failed,
  }


def main(argv: list[str]) -> int:
  if len(argv) not in (2, 3):
    print("usage: python -m benchmarks.layout_verdict RESULTS.jsonl [cpu|gpu|tpu]", file=sys.stderr)
    return 2
  try:
    platform = generator_layout.platform_family(argv[2] if len(argv) == 3 else "gpu")
    with open(argv[1]) as f:
      result = verdict(f, generator_layout.BY_PLATFORM[platform])
  except OSError as e:
    print(f"{argv[1]}: {e.strerror}", file=sys.stderr)
    return 1
  except ValueError as e:
    print(f"{argv[1]}: {e}", file=sys.stderr)
    return 1
  print(json.dumps(result, indent=1))
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
