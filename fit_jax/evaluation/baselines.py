"""Classical anonymization baselines of the paper's section 5.1 (after Ren et
al. 2018 and its refs [3, 29]), on [B, S, S, 3] images in [0, 1] with [B, 5, 2]
landmarks in the same S x S frame.

The paper's parameter values were lost in extraction (docs/reference.md §10), so
these are fit_jax's choices, all at S = 128:

| baseline | operation |
|---|---|
| blur | area-downsample 16x (to 8x8), bicubic upsample back |
| noise | add N(0, 0.5^2) per pixel and channel (sigma 1 on the [-1, 1] scale), clip |
| mask | fill the face box with black |
| superpixel | SLIC (skimage, 100 segments, compactness 10) over the whole image, each segment its mean colour |
| edge | Canny edges (skimage, sigma 1.5) of the face box, white on black, replace the box |

The face box is the square of side 2.6 inter-ocular distances centred on
the landmarks (the same box the dlib recognizer uses), which covers brows to
chin. Noise is drawn from a fixed seed per call so reports are repeatable.
"""

import numpy as np
from PIL import Image

NAMES = ("blur", "noise", "mask", "superpixel", "edge")
BLUR_FACTOR = 16
NOISE_SIGMA = 0.5
SUPERPIXEL_SEGMENTS = 100
SUPERPIXEL_COMPACTNESS = 10.0
EDGE_SIGMA = 1.5
FACE_BOX_SIDE = 2.6  # inter-ocular distances


def face_box(landmarks: np.ndarray, size: int) -> tuple[int, int, int, int]:
  """(top, bottom, left, right) of the face square, clipped to the frame."""
  points = np.asarray(landmarks, np.float64)
  eye_distance = max(np.linalg.norm(points[1] - points[0]), 1.0)
  cx, cy = points.mean(axis=0)
  side = int(round(FACE_BOX_SIDE * eye_distance))
  top, left = int(round(cy - side / 2)), int(round(cx - side / 2))
  clip = lambda v: int(np.clip(v, 0, size))  # noqa: E731
  return clip(top), clip(top + side), clip(left), clip(left + side)


def blur(images, landmarks, seed=0):
  del landmarks, seed
  out = []
  for image in images:
    size = image.shape[0]
    small = max(size // BLUR_FACTOR, 1)
    channels = []
    for c in range(3):
      plane = Image.fromarray(image[..., c].astype(np.float32), mode="F")
      plane = plane.resize((small, small), Image.Resampling.BOX)
      channels.append(np.asarray(plane.resize((size, size), Image.Resampling.BICUBIC)))
    out.append(np.stack(channels, axis=-1))
  return np.clip(np.stack(out), 0.0, 1.0).astype(np.float32)


def noise(images, landmarks, seed=0):
  del landmarks
  rng = np.random.default_rng(seed)
  noisy = images + rng.normal(0.0, NOISE_SIGMA, size=images.shape)
  return np.clip(noisy, 0.0, 1.0).astype(np.float32)


def mask(images, landmarks, seed=0):
  del seed
  out = np.array(images, np.float32)
  for image, points in zip(out, landmarks):
    top, bottom, left, right = face_box(points, image.shape[0])
    image[top:bottom, left:right] = 0.0
  return out


def superpixel(images, landmarks, seed=0):
  del landmarks, seed
  from skimage.segmentation import slic  # noqa: PLC0415  (evaluation extra)

  out = []
  for image in images:
    segments = slic(
      image,
      n_segments=SUPERPIXEL_SEGMENTS,
      compactness=SUPERPIXEL_COMPACTNESS,
      start_label=0,
      channel_axis=-1,
    )
    counts = np.bincount(segments.ravel())
    means = np.stack(
      [
        np.bincount(segments.ravel(), weights=image[..., c].ravel()) / np.maximum(counts, 1)
        for c in range(3)
      ],
      axis=-1,
    )
    out.append(means[segments])
  return np.stack(out).astype(np.float32)


def edge(images, landmarks, seed=0):
  del seed
  from skimage.feature import canny  # noqa: PLC0415  (evaluation extra)

  out = np.array(images, np.float32)
  for image, points in zip(out, landmarks):
    gray = image @ np.array([0.299, 0.587, 0.114], np.float32)
    edges = canny(gray, sigma=EDGE_SIGMA).astype(np.float32)
    top, bottom, left, right = face_box(points, image.shape[0])
    image[top:bottom, left:right] = edges[top:bottom, left:right, None]
  return out


_FUNCTIONS = {"blur": blur, "noise": noise, "mask": mask, "superpixel": superpixel, "edge": edge}


def apply(name: str, images: np.ndarray, landmarks: np.ndarray, seed: int = 0) -> np.ndarray:
  """The named baseline of [B, S, S, 3] [0, 1] images."""
  if name not in _FUNCTIONS:
    raise ValueError(f"unknown baseline {name!r}; choose from {', '.join(NAMES)}")
  return _FUNCTIONS[name](np.asarray(images, np.float32), np.asarray(landmarks, np.float32), seed)
