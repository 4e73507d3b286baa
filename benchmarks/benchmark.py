"""Speed benchmark: prints one JSON line per (mode, dtype, batch).

  python -m benchmarks.benchmark [--config configs/default.py] \
      [--train_batch 48] [--infer_batch 256] [--dtypes float32,bfloat16]

Measures a full training iteration (generator_step + discriminator_step, as
jitted for training, state donated) and generator inference in the
per-image-deterministic mode (`norm=batch`, running statistics). Reports
images/s, seconds per call, compile seconds, model FLOPs counted from the
jaxpr (flop_count; XLA's own estimate beside it as xla_gflop_*, which misses
cuDNN convolutions on GPU), achieved TFLOP/s, MFU against the device's dense
peak where flop_count knows it, and peak device memory where the backend
reports it. The training line also splits the model FLOPs per image by
network, forward and backward; `executed_over_model` compares the FLOPs the
compiled programs execute on all devices with the model's (1.0: no device
repeats another's work). Inputs are random, never zeros. Imports
nothing from TensorFlow.

`--profile_dir DIR` also traces `--profile_calls` calls of each measurement
with jax.profiler (the traces stay under DIR for TensorBoard or Perfetto,
each beside its compiled programs' optimised HLO)
and prints a second JSON line, mode "profile", from profile_summary: device
busy and wall time per call, time by op category, by model scope (forward
and backward) and the slowest ops.

`--modes input` measures the host side instead: training batches of the
configured source (config.data) through batch_loader, for each of
`--input_workers`, so one can check that the host feeds the device faster
than the training iteration consumes (images/s above train_iteration's).

A standalone command like main.py, so it parses its own flags.
"""

import collections
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from benchmarks import flop_count, profile_summary
from fit_jax import models as models_lib
from fit_jax.deploy import inference
from fit_jax.models import generator_layout
from fit_jax.runtime import xla_cpu_flags
from fit_jax.training import batches, train, train_state

_CONFIG = config_flags.DEFINE_config_file(
  "config", "configs/default.py", "Experiment config.", lock_config=False
)
_TRAIN_BATCH = flags.DEFINE_string("train_batch", "48", "Comma-separated training batches.")
_INFER_BATCH = flags.DEFINE_string("infer_batch", "256", "Comma-separated inference batches.")
_DTYPES = flags.DEFINE_string("dtypes", "float32,bfloat16", "Compute dtypes.")
_ITERS = flags.DEFINE_integer("iters", 10, "Timed calls after warm-up.")
_MODES = flags.DEFINE_string("modes", "train,infer", "What to measure: train, infer, input.")
_TRAIN_VARIANTS = flags.DEFINE_string(
  "train_variants", "fused", "fused (config.train.fuse_calls) and/or unfused."
)
_INFER_VARIANTS = flags.DEFINE_string(
  "infer_variants", "folded", "folded (BN folded into convs) and/or running."
)
_PROFILE_DIR = flags.DEFINE_string(
  "profile_dir", "", "If set, trace each measurement there and print a profile summary."
)
_PROFILE_CALLS = flags.DEFINE_integer("profile_calls", 2, "Calls traced per profile.")
_INPUT_WORKERS = flags.DEFINE_string(
  "input_workers",
  "",
  "Comma-separated batch_loader thread counts for --modes input; empty: config.data.num_workers.",
)


def _xla_flops(compiled) -> float:
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else {}
  return float((analysis or {}).get("flops", 0.0))


def _by_network(counts: dict[str, float], images: int) -> dict[str, dict[str, float]]:
  """{name stack: FLOPs} -> {network: {forward, backward: GFLOP per image}}."""
  networks: dict[str, dict[str, float]] = {}
  for stack, flops in counts.items():
    scope, backward = profile_summary.scope_of(stack + "/op")
    direction = networks.setdefault(scope.split("/")[0], {"forward": 0.0, "backward": 0.0})
    direction["backward" if backward else "forward"] += flops / images / 1e9
  return {
    k: {d: round(v, 2) for d, v in dirs.items()}
    for k, dirs in sorted(networks.items(), key=lambda item: -sum(item[1].values()))
    if sum(dirs.values()) >= 0.01
  }


def _rates(flops: float, seconds: float, dtype: str, devices: int) -> dict:
  """Achieved TFLOP/s (all devices) and, on devices of known peak, the MFU."""
  peak = flop_count.peak_flops(jax.devices()[0].device_kind, dtype)
  achieved = flops / seconds
  return {
    "tflops_achieved": achieved / 1e12,
    "mfu": round(achieved / (peak * devices), 4) if peak else None,
  }


def _executed_over_model(per_device: float, model: float, devices: int) -> float:
  """FLOPs all devices' compiled programs execute over the model's: 1.0 means
  no replicated work; above it, work done on several devices or channels XLA
  padded for tensor cores."""
  return round(per_device * devices / model, 4) if model else 0.0


def _peak_memory() -> int | None:
  stats = jax.devices()[0].memory_stats() or {}
  return stats.get("peak_bytes_in_use")


def _profile(name: str, run, hlo_texts: list[str]) -> dict | None:
  """Traces `--profile_calls` calls of run() and summarises them."""
  if not _PROFILE_DIR.value:
    return None
  trace_dir = os.path.join(_PROFILE_DIR.value, name)
  with jax.profiler.trace(trace_dir):
    for _ in range(_PROFILE_CALLS.value):
      jax.block_until_ready(run())
  # The optimised HLO beside the trace makes the folder self-contained: it
  # can be summarised again later, elsewhere (profile_summary.summarize_dir).
  profile_summary.save_hlo(trace_dir, hlo_texts)
  try:
    summary = profile_summary.summarize(trace_dir, hlo_texts, _PROFILE_CALLS.value)
  except (OSError, ValueError, KeyError) as e:
    # The measurement itself must still be printed; the trace stays for a look.
    summary = {"error": f"{type(e).__name__}: {e}"}
  return {"mode": "profile", "of": name, "trace_dir": trace_dir, **summary}


def train_config(config, batch_size: int, variant: str):
  """The config a training measurement of this batch and variant uses."""
  config = config.copy_and_resolve_references()
  config.train.batch_size = batch_size
  config.train.fuse_calls = variant == "fused"
  if config.model.norm_group_size and batch_size % config.model.norm_group_size:
    config.model.norm_group_size = 0
  return config


def infer_config(config):
  """The config an inference measurement uses: per-image deterministic."""
  config = config.copy_and_resolve_references()
  config.model.norm = "batch"
  return config


def bench_train(config, batch_size: int, iters: int, variant: str = "fused") -> dict:
  config = train_config(config, batch_size, variant)
  models = models_lib.build_models(config.model)
  mesh = train_state.make_mesh()
  key = jax.random.PRNGKey(0)
  state = train_state.create_train_state(config, models, key, mesh)
  steps = train.TrainSteps(models, config, mesh, state)
  batch = steps.put_batch(batches.random_batch(config, batch_size))

  t0 = time.perf_counter()
  g_compiled = steps.generator.lower(state, batch, key).compile()
  gen_shapes = jax.eval_shape(steps.generator, state, batch, key)[1]
  generated = jax.tree.map(
    lambda s: jax.device_put(jnp.zeros(s.shape, s.dtype), steps.data_sharding), gen_shapes
  )
  d_compiled = steps.discriminator.lower(state, batch, generated, key).compile()
  compile_s = time.perf_counter() - t0
  xla_flops = _xla_flops(g_compiled) + _xla_flops(d_compiled)
  counts = collections.Counter(flop_count.jaxpr_flops(steps.generator, state, batch, key))
  counts.update(flop_count.jaxpr_flops(steps.discriminator, state, batch, generated, key))
  flops = sum(counts.values())
  executed = sum(flop_count.hlo_module_flops(c.as_text()) for c in (g_compiled, d_compiled))

  for _ in range(2):  # warm-up
    state, metrics = steps(state, batch, key)
  jax.block_until_ready(state)
  t0 = time.perf_counter()
  for _ in range(iters):
    state, metrics = steps(state, batch, key)
  jax.block_until_ready((state, metrics))
  seconds = (time.perf_counter() - t0) / iters
  loss = float(metrics["g/loss"])

  def iteration():
    nonlocal state
    state, _ = steps(state, batch, key)
    return state

  profile = _profile(
    f"train_{config.model.dtype}_{variant}_b{batch_size}",
    iteration,
    [g_compiled.as_text(), d_compiled.as_text()],
  )
  return {
    "mode": "train_iteration",
    "variant": variant,
    "batch": batch_size,
    "images_per_s": batch_size / seconds,
    "seconds": seconds,
    "compile_s": compile_s,
    "gflop_per_iter": flops / 1e9,
    "xla_gflop_per_iter": xla_flops / 1e9,
    **_rates(flops, seconds, config.model.dtype, mesh.size),
    "gflop_per_image_by_network": _by_network(counts, batch_size),
    "executed_over_model": _executed_over_model(executed, flops, mesh.size),
    "finite_loss": bool(np.isfinite(loss)),
    "profile": profile,
    "layout": generator_layout.of(models.generator),
  }


def bench_infer(config, batch_size: int, iters: int, variant: str = "folded") -> dict:
  config = infer_config(config)
  models = models_lib.build_models(config.model)
  size = config.data.image_size
  n = config.model.password_bits
  rng = np.random.default_rng(1)
  variables = jax.jit(
    lambda k: models.generator.init(k, jnp.zeros((2, size, size, 3)), jnp.zeros((2, n)), train=True)
  )(jax.random.PRNGKey(0))
  images = jnp.asarray(rng.uniform(-1, 1, (batch_size, size, size, 3)), jnp.float32)
  password = jnp.asarray(rng.integers(0, 2, (batch_size, n)) - 0.5, jnp.float32)
  generator = models.generator
  if variant == "folded":
    generator, variables = inference.fold_batch_norm(generator, variables)
  fn = jax.jit(lambda v, x, z: generator.apply(v, x, z, train=False))
  t0 = time.perf_counter()
  compiled = fn.lower(variables, images, password).compile()
  compile_s = time.perf_counter() - t0
  xla_flops = _xla_flops(compiled)
  flops = sum(flop_count.jaxpr_flops(fn, variables, images, password).values())
  executed = flop_count.hlo_module_flops(compiled.as_text())
  for _ in range(3):
    out = compiled(variables, images, password)
  jax.block_until_ready(out)
  t0 = time.perf_counter()
  for _ in range(iters):
    out = compiled(variables, images, password)
  jax.block_until_ready(out)
  seconds = (time.perf_counter() - t0) / iters
  profile = _profile(
    f"infer_{config.model.dtype}_{variant}_b{batch_size}",
    lambda: compiled(variables, images, password),
    [compiled.as_text()],
  )
  return {
    "profile": profile,
    "mode": "generator_inference",
    "variant": variant,
    "batch": batch_size,
    "images_per_s": batch_size / seconds,
    "seconds": seconds,
    "compile_s": compile_s,
    "gflop_per_call": flops / 1e9,
    "xla_gflop_per_call": xla_flops / 1e9,
    **_rates(flops, seconds, config.model.dtype, 1),
    "executed_over_model": _executed_over_model(executed, flops, 1),  # one device
    "finite_output": bool(jnp.all(jnp.isfinite(out))),
    "layout": generator_layout.of(models.generator),
  }


def bench_input(config, batch_size: int, iters: int, num_workers: int) -> dict:
  """Host images/s of the configured source through batch_loader."""
  # grain only here: the device measurements run where grain is not installed.
  from fit_jax.data import batch_loader, input_pipeline  # noqa: PLC0415

  source = input_pipeline.build_source(config)
  batches = iter(
    batch_loader.TrainBatches(source, 0, iters + 1, batch_size, num_workers=num_workers)
  )
  t0 = time.perf_counter()
  next(batches)  # the first batch pays for starting the workers
  first_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  count = sum(1 for _ in batches)
  seconds = (time.perf_counter() - t0) / count
  return {
    "mode": "input",
    "source": config.data.source,
    "image_size": config.data.image_size,
    "num_workers": num_workers,
    "batch": batch_size,
    "images_per_s": batch_size / seconds,
    "seconds": seconds,
    "first_batch_s": first_s,
  }


def main(argv):
  del argv
  if _ITERS.value < 1:
    raise app.UsageError(f"--iters={_ITERS.value}: time at least one call")
  base = _CONFIG.value
  if "input" in _MODES.value:
    workers = _INPUT_WORKERS.value or str(base.data.num_workers)
    for n in workers.split(","):
      for batch in _TRAIN_BATCH.value.split(","):
        print(json.dumps(bench_input(base, int(batch), _ITERS.value, int(n))), flush=True)
  for dtype in _DTYPES.value.split(","):
    config = base.copy_and_resolve_references()
    config.model.dtype = dtype
    jobs = []
    if "train" in _MODES.value:
      jobs += [
        (bench_train, int(b), v)
        for b in _TRAIN_BATCH.value.split(",")
        if b
        for v in _TRAIN_VARIANTS.value.split(",")
      ]
    if "infer" in _MODES.value:
      jobs += [
        (bench_infer, int(b), v)
        for b in _INFER_BATCH.value.split(",")
        if b
        for v in _INFER_VARIANTS.value.split(",")
      ]
    for fn, batch, variant in jobs:
      result = fn(config, batch, _ITERS.value, variant)
      profile = result.pop("profile")
      result.update(
        dtype=dtype,
        device=jax.devices()[0].device_kind,
        num_devices=jax.device_count(),
        peak_memory_bytes=_peak_memory(),
        jax=jax.__version__,
      )
      print(json.dumps(result), flush=True)
      if profile:
        print(json.dumps(profile), flush=True)


if __name__ == "__main__":
  xla_cpu_flags.apply()  # as the fit_jax commands: XLA's own CPU convolutions
  app.run(main)
