"""Calibrates a converted reference checkpoint to run on single photos.

  python -m fit_jax.calibrate --checkpoint CONVERTED --faces FOLDER --out DIR \
      [--size 128] [--calls training|anonymize] [--seed 0]

What it estimates and how: fit_jax.deploy.calibrate.
"""

import os
import sys

from absl import app, flags

from fit_jax.deploy import calibrate
from fit_jax.runtime import xla_cpu_flags

_CHECKPOINT = flags.DEFINE_string(
  "checkpoint", None, "Converted reference checkpoint (python -m fit_jax.convert_torch)."
)
_FACES = flags.DEFINE_list("faces", None, "Face images or folders of them (aligned crops).")
_OUT = flags.DEFINE_string("out", None, "Release directory to create.")
_SIZE = flags.DEFINE_integer("size", 128, "Side of the faces (the paper's models: 128).")
_CALLS = flags.DEFINE_enum(
  "calls",
  "training",
  list(calibrate.CALLS),
  "Which generator calls of a training iteration to average.",
)
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the face order and the passwords.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  if not _CHECKPOINT.value or not _FACES.value or not _OUT.value:
    raise app.UsageError("--checkpoint, --faces and --out are required")
  from fit_jax.runtime import quiet_logs  # noqa: PLC0415

  quiet_logs.quiet_orbax()
  try:
    card, failures = calibrate.calibrate(
      _CHECKPOINT.value, _FACES.value, _OUT.value, _SIZE.value, _CALLS.value, _SEED.value
    )
  except (ValueError, FileNotFoundError, FileExistsError) as e:
    raise app.UsageError(str(e)) from None
  for path, reason in failures:
    print(f"skipped {path}: {reason}")
  used = card["calibration"]["faces"]
  print(
    f"calibrated on {used} faces ({used // calibrate.GROUP_SIZE} groups of {calibrate.GROUP_SIZE}, calls "
    f"{', '.join(card['calibration']['calls'])}); wrote {os.path.abspath(_OUT.value)}"
  )
  if used < 240:
    print(f"only {used} faces: give a few hundred for a steadier estimate", file=sys.stderr)


def run() -> None:  # the `fit-calibrate` console script
  xla_cpu_flags.apply()
  app.run(main)


if __name__ == "__main__":
  run()
