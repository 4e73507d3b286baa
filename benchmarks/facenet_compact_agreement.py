"""What compact FaceNet weights cost: embedding agreement and fold-1 accuracy.

  python benchmarks/facenet_compact_agreement.py [--data $FIT_DATA] [--sizes 64,250]

For each image size (the training size and LFW's own), embeds every image of
LFW fold 1's pairs with FaceNet under float32, bfloat16 and int8 weights
(fit_jax.deploy.compact_weights), and prints one JSON line per (size, mode): the
cosine to the float32 embedding (mean, min) and the pairs' verification
accuracy (10 interleaved splits, as fit_jax.evaluate on one fold).
"""

import argparse
import json
import os
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from fit_jax.conversion import convert_facenet  # noqa: E402
from fit_jax.data import pairs as pairs_file  # noqa: E402
from fit_jax.deploy import compact_weights  # noqa: E402
from fit_jax.evaluation import evaluate, lfw_pairs, recognizers  # noqa: E402


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--data", default=os.environ.get("FIT_DATA", "../shared/data"))
  parser.add_argument("--sizes", default="64,250")
  args = parser.parse_args()
  subset = os.path.join(args.data, "lfw_subset")
  pairs = pairs_file.read_pairs(os.path.join(subset, "pairs.txt"))
  pairs, landmarks, _ = lfw_pairs.select(
    pairs, os.path.join(subset, "lfw"), "data/lfw_subset_landmarks.txt", folds=[1]
  )
  same = np.array([p.same for p in pairs])
  folds, _ = evaluate.verification_folds(pairs)
  full = convert_facenet.load_params()
  with tempfile.TemporaryDirectory() as tmp:
    paths = {"float32": None}
    for mode in ("bfloat16", "int8"):
      paths[mode] = os.path.join(tmp, f"facenet.{mode}.npz")
      compact_weights.save(paths[mode], full, mode)
    for size in (int(s) for s in args.sizes.split(",")):
      faces = lfw_pairs.load_faces(pairs, os.path.join(subset, "lfw"), landmarks, size)
      reference = None
      for mode, path in paths.items():
        embed = recognizers.FaceNet(path)(faces.images, faces.landmarks, float(size))
        reference = embed if reference is None else reference
        cosine = np.sum(embed * reference, axis=-1)
        first = embed[[faces.index[p.first] for p in pairs]]
        second = embed[[faces.index[p.second] for p in pairs]]
        accuracy = evaluate.verify(first, second, same, folds)["accuracy"]
        print(
          json.dumps(
            {
              "size": size,
              "mode": mode,
              "images": len(faces.paths),
              "pairs": len(pairs),
              "cosine_to_float32_mean": round(float(cosine.mean()), 6),
              "cosine_to_float32_min": round(float(cosine.min()), 6),
              "fold1_accuracy": round(float(accuracy), 4),
              "bytes": os.path.getsize(path) if path else None,
            }
          ),
          flush=True,
        )


if __name__ == "__main__":
  main()
