"""Packs a config's training faces and recognizer for a machine without them.

  python -m fit_jax.pack --config configs/lfw.py --out .gpu_pack \
      [--config.data.image_size=64] [--quality 90] [--facenet int8] [--max_mib 60]

What is packed: fit_jax.data.pack.
"""

import json
import os
import sys
import types

from absl import app, flags
from ml_collections import config_flags

from fit_jax.data.pack import pack
from fit_jax.runtime import xla_cpu_flags

config = config_flags.DEFINE_config_file("config", None, "Training config file.", lock_config=True)
_FLAGS = types.SimpleNamespace(
  out=flags.DEFINE_string("out", None, "Folder to write faces.npz, pack.json (and FaceNet) into."),
  quality=flags.DEFINE_integer("quality", 90, "JPEG quality of the packed faces."),
  facenet=flags.DEFINE_enum(
    "facenet",
    "int8",
    ["int8", "bfloat16", "float32", "none"],
    "Form of FaceNet's weights (recognizer=facenet).",
  ),
  num_eval=flags.DEFINE_integer("num_eval", 16, "Left-out people packed for sample grids."),
  agreement_faces=flags.DEFINE_integer(
    "agreement_faces", 256, "Faces on which FaceNet's compact weights are compared."
  ),
  max_mib=flags.DEFINE_float("max_mib", 60.0, "Fail if the pack exceeds this many MiB."),
)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not _FLAGS.out.value:
    raise app.UsageError("--out is required")
  if os.path.isfile(_FLAGS.out.value):
    raise app.UsageError(f"--out {_FLAGS.out.value!r} is a file; give a folder")
  os.makedirs(_FLAGS.out.value, exist_ok=True)
  report = pack(
    config.value,
    _FLAGS.out.value,
    quality=_FLAGS.quality.value,
    facenet_mode=_FLAGS.facenet.value,
    num_eval=_FLAGS.num_eval.value,
    agreement_faces=_FLAGS.agreement_faces.value,
  )
  print(json.dumps({k: v for k, v in report.items() if k != "skipped"}, indent=1))
  for path, reason in report["skipped"].items():
    print(f"skipped {path}: {reason}")
  mib = report["total_bytes"] / 2**20
  if mib > _FLAGS.max_mib.value:
    print(
      f"pack is {mib:.1f} MiB, over --max_mib {_FLAGS.max_mib.value:g}: lower --quality "
      "or --config.data.image_size",
      file=sys.stderr,
    )
    sys.exit(1)
  print(f"packed {report['faces']} faces ({mib:.1f} MiB in all) into {_FLAGS.out.value}")


def run() -> None:  # the console script
  xla_cpu_flags.apply()
  app.run(main)


if __name__ == "__main__":
  run()
