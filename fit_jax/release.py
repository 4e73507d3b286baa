"""Writes a trained generator as a release: compact weights and a model card.

  python -m fit_jax.release --checkpoint WORKDIR --out DIR \
      [--mode int8|bfloat16|float32] [--max_part_mib 15] [--config FILE]

What a release holds: fit_jax.deploy.release.
"""

import json
import os
import types

from absl import app, flags
from ml_collections import config_flags

from fit_jax.deploy import compact_weights
from fit_jax.deploy.release import release
from fit_jax.runtime import xla_cpu_flags

_FLAGS = types.SimpleNamespace(
  checkpoint=flags.DEFINE_string("checkpoint", None, "Training workdir (or a checkpoint step)."),
  out=flags.DEFINE_string("out", None, "Folder for generator.npz and model.json."),
  mode=flags.DEFINE_enum("mode", "int8", list(compact_weights.MODES), "Form of the weights."),
  max_part_mib=flags.DEFINE_float(
    "max_part_mib", 0, "Split the weights into parts of at most this many MiB (0: one file)."
  ),
)
config_file = config_flags.DEFINE_config_file(
  "config", None, "Config file, if the workdir has no runs.jsonl.", lock_config=True
)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not _FLAGS.checkpoint.value or not _FLAGS.out.value:
    raise app.UsageError("--checkpoint and --out are required")
  config = config_file.value
  config = json.loads(config.to_json_best_effort()) if config is not None else None
  limit = int(_FLAGS.max_part_mib.value * 2**20) or None
  for path in release(
    _FLAGS.checkpoint.value,
    _FLAGS.out.value,
    mode=_FLAGS.mode.value,
    max_part_bytes=limit,
    config=config,
  ):
    print(f"wrote {path} ({os.path.getsize(path) / 2**20:.1f} MiB)")


def run() -> None:  # the console script
  xla_cpu_flags.apply()
  app.run(main)


if __name__ == "__main__":
  run()
