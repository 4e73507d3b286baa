"""Command line entry point: parses flags and runs training.

  python -m fit_jax.main --config configs/demo.py --workdir /tmp/fit_demo

Multi-host (one process per host, or per GPU group): add --distributed on
every process. The coordinator, process count and process index come from
JAX's own discovery on Cloud TPU and SLURM, or from JAX_COORDINATOR_ADDRESS,
JAX_NUM_PROCESSES and JAX_PROCESS_ID (all three, e.g. on multi-GPU hosts or
Kubernetes). CPU devices of several processes talk through gloo.
"""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from fit_jax.runtime import compilation_cache, xla_cpu_flags

_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "Experiment config file (configs/*.py).", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs, samples.")
_DISTRIBUTED = flags.DEFINE_bool(
  "distributed", False, "Call jax.distributed.initialize() (multi-host runs)."
)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  import jax  # noqa: PLC0415  (after absl parsed the flags)

  from fit_jax.runtime import quiet_logs  # noqa: PLC0415

  quiet_logs.quiet_orbax()

  if _DISTRIBUTED.value:
    from fit_jax.training import multihost  # noqa: PLC0415

    try:
      multihost.initialize()
    except ValueError as e:  # the environment, named in one line
      raise app.UsageError(str(e)) from None
  cache = _CONFIG.value.train.get("compilation_cache", "")
  if cache and not jax.config.jax_compilation_cache_dir:
    # An explicit JAX_COMPILATION_CACHE_DIR wins over the config's default.
    jax.config.update("jax_compilation_cache_dir", os.path.expanduser(cache))
  if jax.config.jax_compilation_cache_dir:
    warning = compilation_cache.kernel_cache_warning(
      jax.config.jax_persistent_cache_enable_xla_caches, jax.default_backend()
    )
    if warning:
      logging.warning(warning)
  from fit_jax.training import preemption, train  # noqa: PLC0415

  workdir = os.path.abspath(os.path.expanduser(_WORKDIR.value))
  logging.info("JAX devices: %s", jax.devices())
  from fit_jax.data import input_pipeline  # noqa: PLC0415
  from fit_jax.training import checkpoints  # noqa: PLC0415

  preempt = preemption.Preemption()
  try:
    state = train.train_and_evaluate(_CONFIG.value, workdir, preempt)
  except (
    input_pipeline.BadRecordError,
    checkpoints.CheckpointMismatchError,
    FileNotFoundError,
  ) as e:
    # The data or the workdir, named in one line (a traceback would bury it).
    sys.exit(f"fit_jax.main: {e}")
  if jax.process_index() > 0:
    return
  if preempt.stopped_at is not None:
    print(
      f"preempted: checkpoint of step {preempt.stopped_at} saved in {workdir}/checkpoints; "
      "run the same command to resume"
    )
    return
  logs = "TensorBoard logs and " if _CONFIG.value.train.get("tensorboard", True) else ""
  print(
    f"done at step {int(state.step)}: checkpoints in {workdir}/checkpoints, {logs}"
    f"metrics.jsonl in {workdir}, sample grids in {workdir}/samples"
  )


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with a mistyped config field as one line (as
  ml_collections raises it, it is a page of traceback)."""
  try:
    return flags.FLAGS(argv)
  except (AttributeError, KeyError) as e:
    reason = str(e).strip("'\"").replace("\\n", "; ").replace("\n", "; ")
    reason = reason.replace("\\'", "").replace('\\"', '"').strip("'\"")
    overrides = [a.split("=")[0] for a in argv if a.startswith("--config.")]
    sys.exit(
      f"unknown config field ({reason}) in {' '.join(overrides) or '--config'}; the "
      "fields are those of the config file"
    )


def run() -> None:  # the `fit-train` console script
  xla_cpu_flags.apply()
  app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
  run()
