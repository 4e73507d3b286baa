"""Exports a generator as a TF SavedModel, and optionally TFLite.

  python -m fit_jax.export --checkpoint CKPT --out DIR [--tflite FILE] [--size S]

The signatures and their contract: fit_jax.deploy.export. Imports TensorFlow
(the `export` extra).
"""

import os

from absl import app, flags

from fit_jax.deploy import export
from fit_jax.runtime import xla_cpu_flags

_CHECKPOINT = flags.DEFINE_string(
  "checkpoint", None, "Training workdir, checkpoint or converted dir."
)
_OUT = flags.DEFINE_string("out", None, "SavedModel directory to create.")
_TFLITE = flags.DEFINE_string("tflite", None, "Also write a TFLite model to this file.")
_SIZE = flags.DEFINE_integer(
  "size", None, "Image side (default: the model card's image size, else 128)."
)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  if not _CHECKPOINT.value or not _OUT.value:
    raise app.UsageError("--checkpoint and --out are required")
  if _TFLITE.value and os.path.exists(_TFLITE.value):
    raise app.UsageError(f"--tflite {_TFLITE.value} exists; choose a new file")
  export.export_saved_model(
    _CHECKPOINT.value, _OUT.value, image_size=_SIZE.value, tflite_path=_TFLITE.value
  )
  print(f"wrote SavedModel with signatures anonymize, recover to {os.path.abspath(_OUT.value)}")
  if _TFLITE.value:
    print(
      f"wrote TFLite model with signatures anonymize, recover to {os.path.abspath(_TFLITE.value)}"
    )


def run() -> None:  # the `fit-export` console script
  xla_cpu_flags.apply()
  app.run(main)


if __name__ == "__main__":
  run()
