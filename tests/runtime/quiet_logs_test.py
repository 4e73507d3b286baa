"""Orbax's routine lines stay out of the tools' output at default verbosity."""

import logging as std_logging

from absl import logging

from fit_jax.runtime import quiet_logs


def _record(path, level, message):
  return std_logging.LogRecord("absl", level, path, 1, message, None, None)


def test_orbax_info_and_missing_metadata_warnings_are_dropped():
  quiet_logs.quiet_orbax()
  quiet_logs.quiet_orbax()  # once only
  handler = logging.get_absl_handler()
  filters = [f for f in handler.filters if isinstance(f, quiet_logs._OrbaxRoutine)]  # noqa: SLF001
  assert len(filters) == 1
  keep = filters[0].filter
  orbax = "/site-packages/orbax/checkpoint/checkpoint_manager.py"
  assert not keep(_record(orbax, std_logging.INFO, "Saving checkpoint at step 5"))
  assert not keep(
    _record(
      orbax, std_logging.WARNING, "Metadata file does not exist: /w/3/default/_CHECKPOINT_METADATA"
    )
  )
  registry = "/site-packages/orbax/checkpoint/_src/serialization/type_handler_registry.py"
  assert not keep(
    _record(registry, std_logging.WARNING, 'Type handler registry type "jax.Array" overriding x')
  )
  assert keep(_record(orbax, std_logging.WARNING, "Reached preemption sync point, step=5"))
  assert keep(_record(orbax, std_logging.ERROR, "background save failed"))
  assert keep(_record("/work/fit_jax/training/train.py", std_logging.INFO, "resuming from step 3"))
