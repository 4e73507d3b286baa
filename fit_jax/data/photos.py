"""Reading people's image files, one clear reason per file that fails, and
the reference's preprocessing of a face.

Shared by the photo tool, calibration and the training pipeline, so every
path decodes, refuses and resizes images the same way.
"""

import os

import numpy as np
from PIL import Image

from fit_jax.data import pixels

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
# Larger images are refused before decoding (a 144 MP photo decodes to
# 2.3 GB for a 128 px face).
MAX_PIXELS = 40_000_000


def preprocess(image: np.ndarray, size: int) -> np.ndarray:
  """The reference's transform of an RGB uint8 image: bicubic resize to
  size x size, then [-1, 1]. Training, the photo tool and calibration share it."""
  pil = Image.fromarray(image)
  if pil.size != (size, size):
    pil = pil.resize((size, size), Image.BICUBIC)
  return pixels.to_unit(np.asarray(pil))


class ItemError(Exception):
  """A problem with one input, reported on one line."""


def to_rgb(im: Image.Image) -> Image.Image:
  """Any PIL image as 8-bit RGB; 16-bit/32-bit integer images are scaled
  down (PIL's own convert would clip them) rather than saturated."""
  if im.mode in ("I;16", "I;16B", "I;16L", "I"):
    im = Image.fromarray((np.asarray(im, np.float64) / 257.0).clip(0, 255).astype(np.uint8))
  return im.convert("RGB")


def collect_inputs(inputs: list[str]) -> list[tuple[str, str]]:
  """(input path, output relative path) for files and folders."""
  items = []
  for given in inputs:
    if os.path.isdir(given):
      for folder, _, names in os.walk(given):
        for name in sorted(names):
          if name.lower().endswith(IMAGE_SUFFIXES):
            full = os.path.join(folder, name)
            items.append((full, os.path.relpath(full, given)))
    else:
      items.append((given, os.path.basename(given)))
  return sorted(items)


def read_rgb(path: str) -> np.ndarray:
  if not os.path.exists(path):
    raise ItemError("no such file")
  try:
    with Image.open(path) as im:
      if im.width * im.height > MAX_PIXELS:
        raise ItemError(f"image of {im.width}x{im.height} pixels is too large")
      im.load()
      rgb = np.asarray(to_rgb(im))
  except ItemError:
    raise
  except Exception as e:
    raise ItemError(f"not a readable image ({type(e).__name__})") from None
  if min(rgb.shape[:2]) < 16:
    raise ItemError(f"image of {rgb.shape[1]}x{rgb.shape[0]} pixels is too small")
  return rgb
