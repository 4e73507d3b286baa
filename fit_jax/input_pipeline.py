"""Input data. For now: the synthetic face source, the project's own data.

Procedural faces with identity labels and exact 5-point landmarks (left eye,
right eye, nose, left and right mouth corners, as MTCNN's order), rendered
in a 250x250 frame like CASIA-WebFace/LFW and resized to the model's size.
Each identity fixes skin and hair colour, face shape and feature spacing;
each image jitters pose (scale, rotation, shift), lighting and background,
so the identity losses have something real to learn and the demo needs no
download. Batches are a pure function of (seed, step): a resumed run sees
exactly the batches an uninterrupted one would.
"""

import numpy as np
from PIL import Image

FRAME = 250


def _identity(identity: int, seed: int):
  rng = np.random.default_rng([seed, identity, 7])
  return {
    "skin": rng.uniform([120, 70, 50], [245, 205, 180]),
    "hair": rng.uniform(0, 120, 3),
    "eyes": rng.uniform(0, 160, 3),
    "face_w": rng.uniform(58, 78),
    "face_h": rng.uniform(78, 98),
    "eye_dx": rng.uniform(17, 25),
    "eye_y": rng.uniform(-22, -10),
    "nose_y": rng.uniform(2, 12),
    "mouth_y": rng.uniform(26, 38),
    "mouth_dx": rng.uniform(11, 18),
  }


def render_face(identity: int, sample: int, seed: int = 0):
  """One synthetic face: (uint8 [250, 250, 3] RGB, landmarks [5, 2] pixels)."""
  p = _identity(identity, seed)
  rng = np.random.default_rng([seed, identity, sample, 11])
  scale = rng.uniform(0.9, 1.1)
  angle = rng.uniform(-0.15, 0.15)
  center = FRAME / 2 + rng.normal(0, 4, 2)
  rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])

  def place(points):
    return np.asarray(points, np.float64) @ rot.T + center

  yy, xx = np.mgrid[0:FRAME, 0:FRAME].astype(np.float64) + 0.5
  # Face-frame coordinates of every pixel (inverse pose).
  local = np.stack([xx - center[0], yy - center[1]], -1) @ np.linalg.inv(rot).T
  lx, ly = local[..., 0], local[..., 1]
  background = rng.uniform(30, 220, 3)
  gradient = (yy / FRAME)[..., None] * rng.uniform(-40, 40, 3)
  img = np.clip(background + gradient, 0, 255)

  def fill(mask, color):
    img[mask] = color

  hair = (lx / (p["face_w"] + 10)) ** 2 + ((ly + 8) / (p["face_h"] + 14)) ** 2 < 1
  fill(hair & (ly < 0), p["hair"])
  face = (lx / p["face_w"]) ** 2 + (ly / p["face_h"]) ** 2 < 1
  light = 1 + 0.25 * (lx / p["face_w"]) * rng.uniform(-1, 1)
  img[face] = np.clip(p["skin"] * light[face][:, None], 0, 255)
  eyes = [(-p["eye_dx"], p["eye_y"]), (p["eye_dx"], p["eye_y"])]
  for ex, ey in eyes:
    fill(((lx - ex) / 9) ** 2 + ((ly - ey) / 5) ** 2 < 1, [245, 245, 245])
    fill((lx - ex) ** 2 + (ly - ey) ** 2 < 12, p["eyes"])
    fill((np.abs(ly - ey + 9) < 2) & (np.abs(lx - ex) < 10), p["hair"])
  nose = (np.abs(lx) < 4 + (ly - p["eye_y"]) * 0.15) & (ly > p["eye_y"] + 6) & (ly < p["nose_y"])
  fill(nose, p["skin"] * 0.8)
  mouth = (np.abs(lx) < p["mouth_dx"]) & (np.abs(ly - p["mouth_y"] - 0.02 * lx**2 / 4) < 3)
  fill(mouth, [150, 50, 60])
  landmarks = place(
    [eyes[0], eyes[1], (0.0, p["nose_y"]), (-p["mouth_dx"], p["mouth_y"]),
     (p["mouth_dx"], p["mouth_y"])]
  )
  noise = rng.normal(0, 3, img.shape)
  return np.clip(img + noise, 0, 255).astype(np.uint8), landmarks.astype(np.float32)


def preprocess(image: np.ndarray, size: int) -> np.ndarray:
  """The reference's transform: bicubic resize to size, then [-1, 1]."""
  pil = Image.fromarray(image)
  if pil.size != (size, size):
    pil = pil.resize((size, size), Image.BICUBIC)
  return np.asarray(pil, np.float32) / 127.5 - 1.0


class SyntheticFaces:
  """Batches of synthetic faces as a pure function of (seed, step).

  Attributes:
    num_identities: identity labels in [0, num_identities).
    image_size: side of the returned images.
  """

  def __init__(self, num_identities: int, image_size: int, seed: int = 0):
    self.num_identities = num_identities
    self.image_size = image_size
    self.seed = seed

  def batch(self, step: int, batch_size: int, split: str = "train") -> dict[str, np.ndarray]:
    """The batch of a step; split 'eval' draws from a separate stream."""
    rng = np.random.default_rng([self.seed, step, {"train": 3, "eval": 5}[split]])
    labels = rng.integers(0, self.num_identities, batch_size)
    samples = rng.integers(0, 2**31, batch_size)
    images, landmarks = [], []
    for identity, sample in zip(labels, samples):
      img, lm = render_face(int(identity), int(sample), self.seed)
      images.append(preprocess(img, self.image_size))
      landmarks.append(lm)
    return {
      "image": np.stack(images),
      "label": labels.astype(np.int32),
      "landmarks": np.stack(landmarks),  # in the 250x250 frame
    }
