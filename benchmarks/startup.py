"""Start-up costs of a training run: prints one JSON line per measurement.

  python -m benchmarks.startup [--config configs/tiny.py]

`init`: compile and run seconds of the fresh state's program (all four
networks' initializers and the optimizer state), with XLA's default
options and with `runtime.run_once_compile`'s. `first_save`: seconds of the
first and second checkpoint save of that state on all devices, with orbax's
default array handler (replica-parallel unless JAX_PLATFORMS names a GPU)
and with the one `training.checkpoints` registers. The persistent compilation cache is off:
every compile is cold. Run on CPU with
XLA_FLAGS=--xla_force_host_platform_device_count=8 for 8 devices.
"""

import functools
import json
import tempfile
import time

import jax
import orbax.checkpoint as ocp
from absl import app
from ml_collections import config_flags

from fit_jax import models as models_lib
from fit_jax.runtime import run_once_compile, xla_cpu_flags
from fit_jax.training import checkpoints, train_state


def time_compiles(fn, args, options_by_name: dict[str, dict]) -> list[dict]:
  """Cold compile and first-run seconds of jax.jit(fn)(*args) per options."""
  lowered = jax.jit(fn).lower(*args)
  results = []
  for name, options in options_by_name.items():
    t0 = time.perf_counter()
    compiled = lowered.compile(compiler_options=options)
    t1 = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    t2 = time.perf_counter()
    results.append(
      {
        "options": name,
        "compiler_options": options,
        "compile_s": round(t1 - t0, 2),
        "run_s": round(t2 - t1, 3),
      }
    )
  return results


def bench_init(config, devices) -> list[dict]:
  fresh = train_state.fresh_state(config, models_lib.build_models(config.model))
  options = {"default": {}, "run_once": run_once_compile.options(devices)}
  args = (jax.random.PRNGKey(0), {})  # no pretrained weights merged in
  return [{"mode": "init", **r} for r in time_compiles(fresh, args, options)]


def bench_first_save(config, mesh, handlers=("orbax_default", "fit_jax")) -> list[dict]:
  models = models_lib.build_models(config.model)
  state = train_state.create_train_state(config, models, jax.random.PRNGKey(0), mesh)
  jax.block_until_ready(state)
  results = []
  for name in handlers:
    with tempfile.TemporaryDirectory() as workdir:
      if name == "fit_jax":
        manager = checkpoints.manager(workdir, keep=2)
      else:
        # The handler orbax registers by default (checkpoints.manager
        # replaces it for the whole process).
        ocp.type_handlers.register_type_handler(
          jax.Array, ocp.type_handlers.ArrayHandler(), override=True
        )
        manager = ocp.CheckpointManager(
          f"{workdir}/checkpoints", options=ocp.CheckpointManagerOptions(create=True)
        )
      seconds = []
      for step in (1, 2):
        t0 = time.perf_counter()
        checkpoints.save(manager, step, state)
        manager.wait_until_finished()
        seconds.append(round(time.perf_counter() - t0, 2))
      manager.close()
    results.append(
      {
        "mode": "first_save",
        "handler": name,
        "num_devices": mesh.devices.size,
        "first_s": seconds[0],
        "second_s": seconds[1],
      }
    )
  return results


def main(argv, config_flag):
  del argv
  jax.config.update("jax_enable_compilation_cache", False)
  config = config_flag.value
  mesh = train_state.make_mesh()
  for result in bench_init(config, jax.devices()) + bench_first_save(config, mesh):
    print(json.dumps({"platform": jax.devices()[0].platform, **result}), flush=True)


def run():
  # Flags are defined here, not at import: the lab's tests import this
  # module beside benchmarks.benchmark, which defines its own --config.
  config_flag = config_flags.DEFINE_config_file(
    "config", "configs/tiny.py", "Experiment config.", lock_config=False
  )
  xla_cpu_flags.apply()
  app.run(functools.partial(main, config_flag=config_flag))


if __name__ == "__main__":
  run()
