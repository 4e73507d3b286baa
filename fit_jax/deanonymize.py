"""Trains the deanonymizer of a classical baseline.

  python -m fit_jax.deanonymize --config configs/deanonymize.py:blur --workdir DIR

What it learns: fit_jax.evaluation.deanonymize.
"""

import os

from absl import app, flags
from ml_collections import config_flags

from fit_jax.evaluation.deanonymize import train
from fit_jax.runtime import xla_cpu_flags

config = config_flags.DEFINE_config_file(
  "config", None, "configs/deanonymize.py:<baseline>", lock_config=True
)
workdir = flags.DEFINE_string("workdir", None, "Output directory.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not config.value or not workdir.value:
    raise app.UsageError("--config and --workdir are required")
  path = train(config.value, os.path.abspath(os.path.expanduser(workdir.value)))
  print(f"deanonymizer for {config.value.deanonymize.baseline!r} written to {path}")


def run() -> None:  # the console script
  xla_cpu_flags.apply()
  app.run(main)


if __name__ == "__main__":
  run()
