"""The faces that LFW verification pairs (fit_jax.data.pairs) name.

Pairs whose images are not in the folder or have no landmarks are left out
and counted, since subsets of LFW (like the lfw_subset folder) cover only
some folds.
"""

import dataclasses
import os

import numpy as np

from fit_jax.data import input_pipeline
from fit_jax.data.pairs import Pair


@dataclasses.dataclass
class Faces:
  """The unique images of a set of pairs, decoded once."""

  paths: list[str]
  images: np.ndarray  # [N, S, S, 3] float32 in [0, 1]
  landmarks: np.ndarray  # [N, 5, 2] pixels of the S x S frame
  index: dict[str, int]


def select(
  pairs: list[Pair],
  images_root: str,
  landmark_file: str,
  folds: list[int] | None = None,
  limit: int | None = None,
) -> tuple[list[Pair], dict[str, np.ndarray], dict[str, int]]:
  """Pairs with both images present and landmarked.

  Returns:
    (kept pairs, landmarks by relative path in original pixels,
     {'not_in_folds', 'missing_image', 'missing_landmarks'} counts).
  """
  records, _ = input_pipeline.parse_landmark_file(landmark_file, with_labels=False)
  landmarks = {r.relpath: r.landmarks for r in records}
  counts = {"not_in_folds": 0, "missing_image": 0, "missing_landmarks": 0}
  kept = []
  for pair in pairs:
    if folds and pair.fold not in folds:
      counts["not_in_folds"] += 1
    elif not all(os.path.isfile(os.path.join(images_root, p)) for p in (pair.first, pair.second)):
      counts["missing_image"] += 1
    elif pair.first not in landmarks or pair.second not in landmarks:
      counts["missing_landmarks"] += 1
    else:
      kept.append(pair)
  if limit:
    # Keep the same/different balance of each fold when a test trims the set.
    same = [p for p in kept if p.same][: (limit + 1) // 2]
    different = [p for p in kept if not p.same][: limit // 2]
    kept = sorted(same + different, key=kept.index)
  return kept, landmarks, counts


def load_faces(
  pairs: list[Pair], images_root: str, landmarks: dict[str, np.ndarray], size: int
) -> Faces:
  """Decodes every image the pairs name once (reference preprocessing, [0, 1])."""
  paths = sorted({p for pair in pairs for p in (pair.first, pair.second)})
  images, points = [], []
  for relpath in paths:
    image, (width, height) = input_pipeline.load_image(os.path.join(images_root, relpath), size)
    images.append((image + 1.0) / 2.0)
    points.append(landmarks[relpath] * np.array([size / width, size / height], np.float32))
  return Faces(
    paths,
    np.stack(images),
    np.stack(points).astype(np.float32),
    {p: i for i, p in enumerate(paths)},
  )
