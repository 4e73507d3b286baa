"""Atomic file writes: a temporary file in the target's folder, then rename.

A reader (or a crash) never sees a half-written output.
"""

import os
from typing import Callable


def write_atomically(path: str, save: Callable[[str], None]) -> None:
  """Calls save(temporary_path), then renames it onto path."""
  folder = os.path.dirname(path) or "."
  os.makedirs(folder, exist_ok=True)
  tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp{os.getpid()}")
  try:
    save(tmp)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def write_npz(path: str, arrays: dict) -> None:
  """numpy's .npz of `arrays` (no pickles), written atomically."""
  import numpy as np  # noqa: PLC0415

  def save(tmp):
    with open(tmp, "wb") as f:
      np.savez(f, **arrays)

  write_atomically(path, save)


def write_text(path: str, text: str) -> None:
  def save(tmp):
    with open(tmp, "w") as f:
      f.write(text)

  write_atomically(path, save)
