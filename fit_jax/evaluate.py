"""The paper's section-5 evaluation of a model on LFW pairs.

  python -m fit_jax.evaluate --checkpoint CKPT --data $FIT_DATA/lfw_subset \
      --landmarks data/lfw_subset_landmarks.txt --out REPORT_DIR \
      [--recognizers dlib,facenet] [--baselines blur,noise,mask,superpixel,edge] \
      [--deanonymizers DIR] [--folds 1]

The protocol and the report: fit_jax.evaluation.evaluate.
"""

import os
import sys
import types

from absl import app, flags

from fit_jax.evaluation import baselines, recognizers
from fit_jax.evaluation.evaluate import evaluate, markdown, write_report
from fit_jax.runtime import xla_cpu_flags

_FLAGS = types.SimpleNamespace(
  checkpoint=flags.DEFINE_string(
    "checkpoint", "", "fit_jax checkpoint (workdir, step or converted dir); empty: baselines only."
  ),
  data=flags.DEFINE_string(
    "data", None, "LFW folder: <data>/lfw/<name>/*.jpg or <data>/<name>/*.jpg."
  ),
  pairs=flags.DEFINE_string(
    "pairs", "", "pairs.txt or pairs_covered.tsv (default <data>/pairs.txt)."
  ),
  landmarks=flags.DEFINE_string(
    "landmarks", "", "Landmark file (default <data>/lfw_landmark.txt; see fit_jax.landmarks)."
  ),
  out=flags.DEFINE_string("out", None, "Report directory (created; must not exist)."),
  recognizers=flags.DEFINE_list("recognizers", ["dlib", "facenet"], f"Of {recognizers.NAMES}."),
  sphereface=flags.DEFINE_string(
    "sphereface", "", "SphereFace weights for --recognizers sphereface (default: the checkpoint's)."
  ),
  baselines=flags.DEFINE_list("baselines", [], f"Of {baselines.NAMES}."),
  deanonymizers=flags.DEFINE_string(
    "deanonymizers", "", "Folder with one fit_jax.deanonymize workdir per baseline, named by it."
  ),
  folds=flags.DEFINE_list("folds", [], "pairs.txt folds to use (default all present)."),
  max_pairs=flags.DEFINE_integer("max_pairs", 0, "Use at most this many pairs (0: all)."),
  detector=flags.DEFINE_enum("detector", "mtcnn", ["mtcnn", "none"], "Detector consistency."),
  image_size=flags.DEFINE_integer(
    "image_size", None, "Side the model sees (default: its model card's, else 128)."
  ),
  batch=flags.DEFINE_integer("batch_size", 32, "Generator batch."),
  seed=flags.DEFINE_integer("seed", 0, "Password seed."),
)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not _FLAGS.data.value or not _FLAGS.out.value:
    raise app.UsageError("--data and --out are required")
  out_dir = os.path.abspath(os.path.expanduser(_FLAGS.out.value))
  if os.path.exists(out_dir):
    raise app.UsageError(f"--out {out_dir} exists; choose a new report directory")
  image_size = _FLAGS.image_size.value
  if image_size is None:
    from fit_jax.deploy import release  # noqa: PLC0415

    card = release.card_for(_FLAGS.checkpoint.value) if _FLAGS.checkpoint.value else None
    image_size = release.image_size(card)
  try:
    report, extras = evaluate(
      checkpoint=_FLAGS.checkpoint.value,
      data=os.path.expanduser(_FLAGS.data.value),
      pairs_file=_FLAGS.pairs.value,
      landmark_file=_FLAGS.landmarks.value,
      recognizer_names=_FLAGS.recognizers.value,
      baseline_names=_FLAGS.baselines.value,
      deanonymizers=_FLAGS.deanonymizers.value,
      sphereface=_FLAGS.sphereface.value,
      folds=[int(x) for x in _FLAGS.folds.value] or None,
      max_pairs=_FLAGS.max_pairs.value,
      detector=_FLAGS.detector.value,
      image_size=image_size,
      batch_size=_FLAGS.batch.value,
      seed=_FLAGS.seed.value,
    )
  except (ValueError, FileNotFoundError, ImportError) as e:
    sys.exit(f"evaluate: {e}")
  write_report(report, extras, out_dir)
  print(markdown(report))
  print(f"report written to {out_dir}/report.json, report.md and plots")


def run() -> None:  # the console script
  xla_cpu_flags.apply()
  app.run(main)


if __name__ == "__main__":
  run()
