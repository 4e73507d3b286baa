"""MTCNN five-point landmarks of a folder (or a prepared TFDS dataset).

  python -m fit_jax.landmarks --images DIR --out FILE [--with_labels]
  python -m fit_jax.landmarks --tfds lfw --tfds_data_dir DIR --out FILE

The file format and the face chosen per image: fit_jax.data.landmarks.
"""

import os
import types

from absl import app, flags

from fit_jax.data.landmarks import IMAGE_SUFFIXES, detect_folder, detect_tfds
from fit_jax.runtime import atomic, xla_cpu_flags

_FLAGS = types.SimpleNamespace(
  images=flags.DEFINE_string("images", None, "Folder of images (searched recursively)."),
  out=flags.DEFINE_string("out", None, "Landmark file to write."),
  tfds=flags.DEFINE_string("tfds", None, "A prepared TFDS dataset (e.g. lfw) instead of --images."),
  tfds_data_dir=flags.DEFINE_string("tfds_data_dir", None, "TFDS data_dir of --tfds."),
  with_labels=flags.DEFINE_bool("with_labels", False, "CASIA format with identity labels."),
  batch=flags.DEFINE_integer("batch", 8, "Images per MTCNN call."),
)


def main(argv):
  del argv
  root, out = _FLAGS.images.value, _FLAGS.out.value
  if not _FLAGS.tfds.value and (not root or not os.path.isdir(root)):
    raise app.UsageError(f"--images {root!r} is not a folder")
  if not out:
    raise app.UsageError("--out is required")
  if out.lower().endswith(IMAGE_SUFFIXES):
    raise app.UsageError(f"--out {out!r} looks like an image; refusing to overwrite it")
  if _FLAGS.tfds.value:
    lines, failures = detect_tfds(_FLAGS.tfds.value, _FLAGS.tfds_data_dir.value, _FLAGS.batch.value)
  else:
    lines, failures = detect_folder(root, _FLAGS.with_labels.value, _FLAGS.batch.value)
  atomic.write_text(out, "".join(line + "\n" for line in lines))
  atomic.write_text(out + ".failures.txt", "".join(f"{p}\t{r}\n" for p, r in failures))
  for relpath, reason in failures:
    print(f"skipped {relpath}: {reason}")
  print(
    f"wrote {len(lines)} landmark lines to {out}; {len(failures)} images "
    f"without landmarks (listed in {out}.failures.txt)"
  )


def run() -> None:  # the console script
  xla_cpu_flags.apply()
  app.run(main)


if __name__ == "__main__":
  run()
