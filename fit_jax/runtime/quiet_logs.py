"""Keeps orbax's routine log lines out of the command-line tools' output.

At absl's default verbosity, orbax logs ~10 INFO lines per checkpoint save
or restore (128 of the demo's 327 lines) and warns on every restore of a
checkpoint without `_CHECKPOINT_METADATA`, which fit_jax's converted and
older checkpoints lack (harmless: the state's own metadata is read), and
when fit_jax replaces its array handler (training.checkpoints). With
`--verbosity=1` (debug) everything is shown again.
"""

import logging as std_logging

from absl import logging

_HARMLESS = ("_CHECKPOINT_METADATA", "Failed to get item metadata", "Type handler registry type")


class _OrbaxRoutine(std_logging.Filter):
  def filter(self, record: std_logging.LogRecord) -> bool:
    if "/orbax/" not in record.pathname.replace("\\", "/"):
      return True
    if record.levelno < std_logging.WARNING:
      return False
    return not any(text in record.getMessage() for text in _HARMLESS)


def quiet_orbax() -> None:
  """Installs the filter on absl's handler (once), unless debugging."""
  if logging.get_verbosity() > logging.INFO:
    return
  handler = logging.get_absl_handler()
  if not any(isinstance(f, _OrbaxRoutine) for f in handler.filters):
    handler.addFilter(_OrbaxRoutine())
