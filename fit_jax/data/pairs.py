"""LFW verification pairs files (pairs.txt, View 2).

pairs.txt: a header `10 300` (folds, same pairs per fold), then per fold 300
lines `name i j` (same person) and 300 lines `name1 i name2 j` (different
people). A `pairs_covered.tsv` (fold, name1, idx1, name2, idx2, same) is read
too.
"""

import dataclasses
import os


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
