"""LFW verification pairs (pairs.txt, View 2) and the faces they name.

pairs.txt: a header `10 300` (folds, same pairs per fold), then per fold 300
lines `name i j` (same person) and 300 lines `name1 i name2 j` (different
people). A `pairs_covered.tsv` (fold, name1, idx1, name2, idx2, same) is read
too. Pairs whose images are not in the folder or have no landmarks are left
out and counted, since subsets of LFW (like the lfw_subset folder)
cover only some folds.
"""

import dataclasses
import os

import numpy as np

from fit_jax import input_pipeline


@dataclasses.dataclass(frozen=True)
class Pair:
  fold: int
  first: str  # relative image path, e.g. Abel_Pacheco/Abel_Pacheco_0001.jpg
  second: str
  same: bool


def _image(name: str, index: str) -> str:
  return f"{name}/{name}_{int(index):04d}.jpg"


def read_pairs(path: str) -> list[Pair]:
  """All pairs of a pairs.txt or pairs_covered.tsv, in file order."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: pairs file not found")
  pairs = []
  with open(path) as f:
    lines = [line.split() for line in f if line.strip()]
  if path.endswith(".tsv"):
    for number, fields in enumerate(lines[1:], start=2):
      if len(fields) != 6:
        raise ValueError(f"{path}:{number}: expected 6 tab-separated fields, got {len(fields)}")
      fold, n1, i1, n2, i2, same = fields
      pairs.append(Pair(int(fold), _image(n1, i1), _image(n2, i2), same == "1"))
    return pairs
  try:
    folds, per_fold = (int(v) for v in lines[0][:2])
  except (ValueError, IndexError):
    raise ValueError(f"{path}:1: expected the header 'folds pairs_per_fold'") from None
  body = lines[1:]
  if len(body) != folds * per_fold * 2:
    raise ValueError(f"{path}: {len(body)} pair lines, the header promises {folds * per_fold * 2}")
  for number, fields in enumerate(body):
    fold = number // (2 * per_fold) + 1
    try:
      if len(fields) == 3:
        pairs.append(Pair(fold, _image(fields[0], fields[1]), _image(fields[0], fields[2]), True))
      elif len(fields) == 4:
        pairs.append(Pair(fold, _image(fields[0], fields[1]), _image(fields[2], fields[3]), False))
      else:
        raise ValueError(f"expected 3 or 4 fields, got {len(fields)}")
    except ValueError as e:
      raise ValueError(f"{path}:{number + 2}: {e}") from None
  return pairs


@dataclasses.dataclass
class Faces:
  """The unique images of a set of pairs, decoded once."""

  paths: list[str]
  images: np.ndarray  # [N, S, S, 3] float32 in [0, 1]
  landmarks: np.ndarray  # [N, 5, 2] pixels of the S x S frame
  index: dict[str, int]


def select(
  pairs: list[Pair], images_root: str, landmark_file: str, folds: list[int] | None = None,
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
  return Faces(paths, np.stack(images), np.stack(points).astype(np.float32),
               {p: i for i, p in enumerate(paths)})
