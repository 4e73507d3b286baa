"""Faces in the wild: detection, the reference's face crop, feathered paste.

The crop follows the reference's LFW_CROP (docs/reference.md §9): the MTCNN box is
widened to twice its width, made square with that width, centred on the
box, clipped to the image, and resized to the model's 128x128. After the
transform, the crop is resized back and pasted with a feathered mask (full
weight inside, a smooth cosine ramp over the outer 12 % of the crop) so no
seam shows where the transformed face meets the untouched photo.
"""

import dataclasses

import numpy as np
from PIL import Image

from fit_jax.data import pixels

MIN_FACE_PIXELS = 24  # smaller MTCNN boxes are reported, not transformed
FEATHER = 0.12


@dataclasses.dataclass(frozen=True)
class Crop:
  """A square crop box (left, top, size) in image pixels."""

  left: int
  top: int
  size: int

  def to_json(self):
    return {"left": self.left, "top": self.top, "size": self.size}


def crop_box(box, width: int, height: int) -> Crop:
  """LFW_CROP's widened square box around an MTCNN box (x, y, w, h)."""
  x, y, w, h = box
  size = int(round(2 * w))
  size = min(size, width, height)
  cx, cy = x + w / 2, y + h / 2
  left = int(round(min(max(cx - size / 2, 0), width - size)))
  top = int(round(min(max(cy - size / 2, 0), height - size)))
  return Crop(left, top, size)


class Detector:
  """MTCNN faces of an RGB uint8 image: (crops, too_small_count)."""

  def __init__(self, min_confidence: float = 0.9):
    from mtcnn import MTCNN  # noqa: PLC0415  (TensorFlow; `faces` extra)

    self._mtcnn = MTCNN()
    self.min_confidence = min_confidence

  def __call__(self, image: np.ndarray) -> tuple[list[Crop], int]:
    faces = [f for f in self._mtcnn.detect_faces(image) if f["confidence"] >= self.min_confidence]
    height, width = image.shape[:2]
    crops, small = [], 0
    for face in faces:
      if min(face["box"][2:]) < MIN_FACE_PIXELS:
        small += 1
        continue
      crops.append(crop_box(face["box"], width, height))
    return crops, small


def extract(image: np.ndarray, crop: Crop, size: int = 128) -> np.ndarray:
  """The crop resized (bicubic) to [size, size, 3] float32 in [-1, 1]."""
  region = image[crop.top : crop.top + crop.size, crop.left : crop.left + crop.size]
  pil = Image.fromarray(region).resize((size, size), Image.BICUBIC)
  return pixels.to_unit(np.asarray(pil))


def feather_mask(size: int) -> np.ndarray:
  """[size, size, 1] weights: 1 inside, cosine ramp to 0 at the border."""
  ramp = max(1, int(round(FEATHER * size)))
  t = np.ones(size, np.float32)
  edge = 0.5 - 0.5 * np.cos(np.pi * (np.arange(ramp) + 0.5) / ramp)
  t[:ramp] = edge
  t[-ramp:] = edge[::-1]
  return (t[:, None] * t[None, :])[..., None]


def paste(image: np.ndarray, crop: Crop, face: np.ndarray) -> np.ndarray:
  """Blends a transformed [-1, 1] face back into a uint8 image (a copy)."""
  out = image.astype(np.float32)
  face_u8 = pixels.to_uint8(face)
  resized = np.asarray(
    Image.fromarray(face_u8).resize((crop.size, crop.size), Image.BICUBIC), np.float32
  )
  mask = feather_mask(crop.size)
  window = out[crop.top : crop.top + crop.size, crop.left : crop.left + crop.size]
  out[crop.top : crop.top + crop.size, crop.left : crop.left + crop.size] = (
    mask * resized + (1 - mask) * window
  )
  return np.clip(out + 0.5, 0, 255).astype(np.uint8)
