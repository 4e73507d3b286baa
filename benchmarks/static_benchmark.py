"""The benchmark's programs, compiled for an accelerator this machine lacks.

  python -m benchmarks.static_benchmark --target benchmarks/targets/h200.txtpb \
      [--config configs/default.py] [--train_batch 48] [--infer_batch 256] \
      [--dtypes bfloat16] [--modes train,infer] [--train_variants fused] \
      [--infer_variants folded]
  python -m benchmarks.static_benchmark --tpu_topology v5e:2x2 [same flags]

XLA compiles for a GPU from a description of it (a GpuTargetConfigProto in
text form, like the specs in XLA's sources) without the GPU being present:
the result is the program that GPU would run, with its fusions, layouts and
cuDNN calls, less the autotuning (cuDNN algorithms are left to run time).
This needs JAX's CUDA plugin, `jax[cuda12]` of the installed jax version,
best in a separate environment (README, Benchmark). Without --target the
programs are compiled for this machine's first device, which is how the
tests run this module.

With --tpu_topology, libtpu (`jax[tpu]` of the installed jax version) does
the same for a TPU slice: the training step is compiled data-parallel over
all the slice's chips (the batch flags give the global batch), inference for
one chip, and each line adds the TPU compiler's own cost estimates
(benchmarks.tpu_cost: estimated cycles per kernel, in ms for a chip of known
clock).

Prints one JSON line per program: model FLOPs (flop_count, from the jaxpr),
the FLOPs the compiled program executes, and hlo_traffic's summary: kernels,
memory traffic by op category, the heaviest kernels and the roofline floor
(peak FLOP/s from flop_count.peak_flops, bandwidth from the target's
memory_bandwidth), and the compiler's memory estimate per device for each
program (arguments, outputs and temporaries, donated buffers counted once).
Nothing runs, so the figures say what a change does to the program (fewer
kernels, fewer bytes), not how fast it runs.

Takes the flags of benchmarks.benchmark; those about timing are ignored.
"""

import collections
import json
import os
import re

# JAX's CUDA plugin refuses to load on a machine without a GPU driver unless
# told not to check it; the check runs when JAX first looks for devices.
os.environ.setdefault("JAX_SKIP_CUDA_CONSTRAINTS_CHECK", "1")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from benchmarks import benchmark, flop_count, hlo_traffic, tpu_cost  # noqa: E402
from fit_jax import models as models_lib  # noqa: E402
from fit_jax.deploy import inference  # noqa: E402
from fit_jax.models import generator_layout  # noqa: E402
from fit_jax.runtime import xla_cpu_flags  # noqa: E402
from fit_jax.training import batches, train, train_state  # noqa: E402

_TARGET = flags.DEFINE_string(
  "target",
  "",
  "GpuTargetConfigProto text file of the GPU to compile for; empty: this machine's first device.",
)
_TPU_TOPOLOGY = flags.DEFINE_string(
  "tpu_topology",
  "",
  "TPU slice to compile for, as JAX names it (v5e:2x2, "
  "v5p:2x2x1, v4:2x2x1); needs libtpu. Excludes --target.",
)


def tpu_devices(name: str) -> list:
  """The compile-only devices (chips) of a TPU slice, e.g. v5e:2x2."""
  from jax.experimental import topologies  # noqa: PLC0415

  try:
    topology = topologies.get_topology_desc(topology_name=name, platform="tpu")
  except Exception as e:  # libtpu's own errors name the bad field
    first = str(e).splitlines()[0] if str(e) else type(e).__name__
    if "support not installed" in first:
      raise ValueError(
        f"--tpu_topology {name}: compiling for a TPU needs libtpu "
        f"(pip install 'jax[tpu]=={jax.__version__}')"
      ) from e
    raise ValueError(f"--tpu_topology {name}: {first}") from e
  return list(topology.devices)


def target_device(path: str):
  """A compile-only device for the GPU that the target file describes."""
  from jax.experimental import topologies  # noqa: PLC0415

  try:
    with open(path) as f:
      text = f.read()
  except OSError as e:
    raise ValueError(f"--target {path}: {e.strerror}") from e
  try:
    topology = topologies.get_topology_desc("", "cuda", topology="1x1x1", target_config=text)
  except NotImplementedError as e:
    raise ValueError(
      f"--target {path}: compiling for a GPU needs JAX's CUDA plugin "
      f"(pip install 'jax[cuda12]=={jax.__version__}')"
    ) from e
  except Exception as e:  # XLA's own parse errors name the bad field
    raise ValueError(f"--target {path}: {str(e).splitlines()[0]}") from e
  return topology.devices[0]


def memory_bandwidth(path: str) -> float | None:
  """The target's memory_bandwidth (bytes/s), if it states one."""
  if not path:
    return None
  with open(path) as f:
    match = re.search(r"memory_bandwidth:\s*(\d+)", f.read())
  return float(match.group(1)) if match else None


def _spec(value, sharding):
  return jax.ShapeDtypeStruct(np.shape(value), jnp.result_type(value), sharding=sharding)


def train_programs(config, batch_size: int, variant: str, devices: list) -> tuple[list, float]:
  """The compiled generator and discriminator steps of one training iteration,
  data-parallel over `devices` (global batch `batch_size`), and the
  iteration's model FLOPs; nothing is allocated."""
  config = benchmark.train_config(config, batch_size, variant)
  models = models_lib.build_models(config.model, devices[0].platform)
  mesh = train_state.make_mesh(devices)
  key = jax.random.PRNGKey(0)
  state = train_state.abstract_train_state(config, models, mesh)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  steps = train.TrainSteps(models, config, mesh, state)
  batch = {
    k: _spec(v, steps.data_sharding) for k, v in batches.random_batch(config, batch_size).items()
  }
  key = _spec(key, replicated)
  generated = jax.tree.map(
    lambda s: _spec(s, steps.data_sharding), jax.eval_shape(steps.generator, state, batch, key)[1]
  )
  compiled = [
    steps.generator.lower(state, batch, key).compile(),
    steps.discriminator.lower(state, batch, generated, key).compile(),
  ]
  counts = collections.Counter(flop_count.jaxpr_flops(steps.generator, state, batch, key))
  counts.update(flop_count.jaxpr_flops(steps.discriminator, state, batch, generated, key))
  return compiled, sum(counts.values())


def infer_program(config, batch_size: int, variant: str, devices: list) -> tuple[list, float]:
  """The compiled generator inference (`folded` or `running` statistics) on
  the first of `devices`."""
  config = benchmark.infer_config(config)
  models = models_lib.build_models(config.model, devices[0].platform)
  size, n = config.data.image_size, config.model.password_bits
  generator = models.generator
  shapes = jax.eval_shape(
    lambda k: generator.init(k, jnp.zeros((2, size, size, 3)), jnp.zeros((2, n)), train=True),
    jax.random.PRNGKey(0),
  )
  variables = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
  if variant == "folded":
    generator, variables = inference.fold_batch_norm(generator, variables)
  replicated = jax.sharding.NamedSharding(
    jax.sharding.Mesh(devices[:1], ("data",)), jax.sharding.PartitionSpec()
  )
  args = (
    jax.tree.map(lambda v: _spec(v, replicated), variables),
    jax.ShapeDtypeStruct((batch_size, size, size, 3), jnp.float32, sharding=replicated),
    jax.ShapeDtypeStruct((batch_size, n), jnp.float32, sharding=replicated),
  )
  fn = jax.jit(lambda v, x, z: generator.apply(v, x, z, train=False))
  flops = sum(flop_count.jaxpr_flops(fn, *args).values())
  return [fn.lower(*args).compile()], flops


def memory_gib(compiled) -> float | None:
  """The compiler's estimate of a program's device memory: arguments,
  outputs and temporaries, a donated argument counted once (None where the
  backend gives no analysis)."""
  try:
    stats = compiled.memory_analysis()
  except (NotImplementedError, jax.errors.JaxRuntimeError):
    return None
  if stats is None:
    return None
  total = (
    stats.argument_size_in_bytes
    + stats.output_size_in_bytes
    + stats.temp_size_in_bytes
    - stats.alias_size_in_bytes
  )
  return round(total / 2**30, 3)


def describe(
  compiled: list, model_flops: float, device, dtype: str, bandwidth: float | None, devices: int = 1
) -> dict:
  """The JSON fields of one measurement's compiled programs, each run on
  `devices` devices (one SPMD program per device: its HLO is one device's)."""
  texts = [c.as_text() for c in compiled]
  executed = devices * sum(flop_count.hlo_module_flops(t) for t in texts)
  fields = {
    "gflop_model": model_flops / 1e9,
    "executed_over_model": round(executed / model_flops, 4) if model_flops else 0.0,
    "memory_gib_by_program": [memory_gib(c) for c in compiled],
  }
  if device.platform == "tpu":
    # TPU programs keep their tiled layouts, async copies and slices in the
    # HLO that hlo_traffic reads as GPU kernels; the compiler's own estimates
    # say more.
    return {**fields, **tpu_cost.summarize(texts, device.device_kind)}
  peak = flop_count.peak_flops(device.device_kind, dtype)
  return {
    **fields,
    "kernels_by_program": [len(hlo_traffic.entry_traffic(t)) for t in texts],
    **hlo_traffic.summarize(texts, peak, bandwidth),
  }


def main(argv):
  del argv
  if _TARGET.value and _TPU_TOPOLOGY.value:
    raise app.UsageError("--target (a GPU) and --tpu_topology exclude each other")
  if _TPU_TOPOLOGY.value:
    devices = tpu_devices(_TPU_TOPOLOGY.value)
  else:
    devices = [target_device(_TARGET.value) if _TARGET.value else jax.devices()[0]]
  device = devices[0]
  bandwidth = memory_bandwidth(_TARGET.value)
  modes = benchmark._MODES.value.split(",")
  for dtype in benchmark._DTYPES.value.split(","):
    config = benchmark._CONFIG.value.copy_and_resolve_references()
    config.model.dtype = dtype
    jobs = []
    if "train" in modes:
      jobs += [
        ("train_iteration", train_programs, int(b), v)
        for b in benchmark._TRAIN_BATCH.value.split(",")
        if b
        for v in benchmark._TRAIN_VARIANTS.value.split(",")
      ]
    if "infer" in modes:
      jobs += [
        ("generator_inference", infer_program, int(b), v)
        for b in benchmark._INFER_BATCH.value.split(",")
        if b
        for v in benchmark._INFER_VARIANTS.value.split(",")
      ]
    for mode, build, batch, variant in jobs:
      # Inference is per image: one chip says it all.
      on = devices if mode == "train_iteration" else devices[:1]
      compiled, flops = build(config, batch, variant, on)
      print(
        json.dumps(
          {
            "mode": mode,
            "variant": variant,
            "batch": batch,
            "dtype": dtype,
            "target": device.device_kind,
            "devices": len(on),
            "layout": generator_layout.resolve(
              {n: config.model.generator.get(n) for n in generator_layout.LAYOUT_OPTIONS},
              device.platform,
            ),
            "jax": jax.__version__,
            **describe(compiled, flops, device, dtype, bandwidth, len(on)),
          }
        ),
        flush=True,
      )


if __name__ == "__main__":
  xla_cpu_flags.apply()  # as the fit_jax commands: XLA's own CPU convolutions
  app.run(main)
