"""Command line entry point: parses flags and runs training.

  python -m fit_jax.main --config configs/demo.py --workdir /tmp/fit_demo

Multi-host (one process per host, or per GPU group): add --distributed on
every process. The coordinator, process count and process index come from
JAX's own discovery on Cloud TPU and SLURM, or from JAX_COORDINATOR_ADDRESS,
JAX_NUM_PROCESSES and JAX_PROCESS_ID (all three, e.g. on multi-GPU hosts or
Kubernetes). CPU devices of several processes talk through gloo.
"""

import os

from absl import app, flags, logging
from ml_collections import config_flags

from fit_jax import compilation_cache

_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "Experiment config file (configs/*.py).", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs, samples.")
_DISTRIBUTED = flags.DEFINE_bool(
  "distributed", False, "Call jax.distributed.initialize() (multi-host runs)."
)
flags.mark_flags_as_required(["config", "workdir"])

_ENVIRONMENT = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


def distributed_arguments(environ=os.environ) -> dict:
  """jax.distributed.initialize's arguments from the environment.

  JAX reads only the coordinator's address from its environment; the process
  count and index must be passed. With none of the three set, JAX's cluster
  discovery (Cloud TPU, SLURM, ...) fills them in.
  """
  given = [name for name in _ENVIRONMENT if environ.get(name)]
  if not given:
    return {}
  if len(given) != len(_ENVIRONMENT):
    missing = sorted(set(_ENVIRONMENT) - set(given))
    raise app.UsageError(f"--distributed with {', '.join(given)} set also needs {', '.join(missing)}")
  try:
    count, index = int(environ["JAX_NUM_PROCESSES"]), int(environ["JAX_PROCESS_ID"])
  except ValueError:
    raise app.UsageError("JAX_NUM_PROCESSES and JAX_PROCESS_ID must be integers") from None
  if not 0 <= index < count:
    raise app.UsageError(f"JAX_PROCESS_ID={index} is outside [0, JAX_NUM_PROCESSES={count})")
  return {"coordinator_address": environ["JAX_COORDINATOR_ADDRESS"],
          "num_processes": count, "process_id": index}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  import jax  # noqa: PLC0415  (after absl parsed the flags)

  if _DISTRIBUTED.value:
    # CPU devices need a collectives implementation across processes (GPUs
    # and TPUs have their own); it must be chosen before the backend starts.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**distributed_arguments())
  cache = _CONFIG.value.train.get("compilation_cache", "")
  if cache and not jax.config.jax_compilation_cache_dir:
    # An explicit JAX_COMPILATION_CACHE_DIR wins over the config's default.
    jax.config.update("jax_compilation_cache_dir", os.path.expanduser(cache))
  if jax.config.jax_compilation_cache_dir:
    warning = compilation_cache.kernel_cache_warning(
      jax.config.jax_persistent_cache_enable_xla_caches, jax.default_backend())
    if warning:
      logging.warning(warning)
  from fit_jax import preemption, train  # noqa: PLC0415

  workdir = os.path.abspath(os.path.expanduser(_WORKDIR.value))
  logging.info("JAX devices: %s", jax.devices())
  preempt = preemption.Preemption()
  state = train.train_and_evaluate(_CONFIG.value, workdir, preempt)
  if jax.process_index() > 0:
    return
  if preempt.stopped_at is not None:
    print(f"preempted: checkpoint of step {preempt.stopped_at} saved in {workdir}/checkpoints; "
          "run the same command to resume")
    return
  logs = "TensorBoard logs and " if _CONFIG.value.train.get("tensorboard", True) else ""
  print(f"done at step {int(state.step)}: checkpoints in {workdir}/checkpoints, {logs}"
        f"metrics.jsonl in {workdir}, sample grids in {workdir}/samples")


if __name__ == "__main__":
  app.run(main)
