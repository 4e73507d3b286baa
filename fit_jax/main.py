"""Command line entry point: parses flags and runs training.

  python -m fit_jax.main --config configs/demo.py --workdir /tmp/fit_demo
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


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  import jax  # noqa: PLC0415  (after absl parsed the flags)

  if _DISTRIBUTED.value:
    jax.distributed.initialize()
  cache = _CONFIG.value.train.get("compilation_cache", "")
  if cache and not jax.config.jax_compilation_cache_dir:
    # An explicit JAX_COMPILATION_CACHE_DIR wins over the config's default.
    jax.config.update("jax_compilation_cache_dir", os.path.expanduser(cache))
  if jax.config.jax_compilation_cache_dir:
    warning = compilation_cache.kernel_cache_warning(
      jax.config.jax_persistent_cache_enable_xla_caches, jax.default_backend())
    if warning:
      logging.warning(warning)
  from fit_jax import train  # noqa: PLC0415

  workdir = os.path.abspath(os.path.expanduser(_WORKDIR.value))
  logging.info("JAX devices: %s", jax.devices())
  train.train_and_evaluate(_CONFIG.value, workdir)
  logs = "TensorBoard logs and " if _CONFIG.value.train.get("tensorboard", True) else ""
  print(f"done: checkpoints in {workdir}/checkpoints, {logs}metrics.jsonl in "
        f"{workdir}, sample grids in {workdir}/samples")


if __name__ == "__main__":
  app.run(main)
