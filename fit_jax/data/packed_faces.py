"""Training faces packed at the training size into one file (`data.source=packed`).

A packed file carries a folder source's training faces, already resized to
`data.image_size`, as JPEG bytes with their labels and landmarks, plus a few
evaluation faces for the sample grids. It is what a training machine
without the image folders, grain or TensorFlow reads (a lent accelerator;
see `python -m fit_jax.pack`). All of LFW outside fold 1 at 64 px is ~30 MB.

The packed images are the folder source's preprocessed images (bicubic
resize of the decoded JPEG), rounded to uint8 and JPEG-encoded once more at
`quality`: a small, measured loss (`pack` reports its PSNR) that makes full
LFW small enough to travel.

Batches are a pure function of (seed, step), like every source: epoch e
visits the faces in the order of numpy's permutation seeded (seed, e), so a
resumed run sees exactly the batches of an uninterrupted one. The order
differs from the folder source's (grain's shuffle), which the packing
machine has and the training machine may not.
"""

import io

import numpy as np
from PIL import Image

from fit_jax.data import pixels

FORMAT = 1


def encode_jpeg(image: np.ndarray, quality: int) -> bytes:
  """[S, S, 3] uint8 -> JPEG bytes (4:4:4, so colour stays sharp at 64 px)."""
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, "JPEG", quality=quality, subsampling=0)
  return buffer.getvalue()


def join_jpegs(jpegs: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
  """(concatenated bytes, offsets [N + 1]) of a list of encoded images."""
  offsets = np.zeros(len(jpegs) + 1, np.int64)
  offsets[1:] = np.cumsum([len(j) for j in jpegs])
  data = np.frombuffer(b"".join(jpegs), np.uint8) if jpegs else np.zeros(0, np.uint8)
  return data, offsets


def decode_all(data: np.ndarray, offsets: np.ndarray, size: int, where: str) -> np.ndarray:
  """[N, size, size, 3] uint8 of the packed JPEGs."""
  images = np.empty((len(offsets) - 1, size, size, 3), np.uint8)
  for i in range(len(images)):
    chunk = data[offsets[i] : offsets[i + 1]].tobytes()
    with Image.open(io.BytesIO(chunk)) as im:
      image = np.asarray(im.convert("RGB"))
    if image.shape != (size, size, 3):
      raise ValueError(
        f"{where}: packed image {i} is {image.shape[1]}x{image.shape[0]}, not {size}x{size}"
      )
    images[i] = image
  return images


class PackedFaces:
  """Batches of a packed file, per step (the folder sources' interface).

  Args:
    path: the .npz written by `python -m fit_jax.pack`.
    image_size: config.data.image_size; must be the packed size.
    landmark_frame: config.data.landmark_frame; must be the packed frame.
    num_classes: labels must lie in [0, num_classes).
    seed: shuffling seed (a new permutation every epoch).
  """

  def __init__(
    self, path: str, *, image_size: int, landmark_frame: float, num_classes: int, seed: int = 0
  ):
    try:
      with np.load(path, allow_pickle=False) as npz:
        packed = {k: npz[k] for k in npz.files}
    except FileNotFoundError:
      raise FileNotFoundError(
        f"config.data.root={path!r}: no packed file (python -m fit_jax.pack writes one)"
      ) from None
    except (OSError, ValueError) as e:
      raise ValueError(f"{path}: not a packed faces file ({e})") from None
    if int(packed.get("format", -1)) != FORMAT:
      raise ValueError(f"{path}: packed format {packed.get('format')}, expected {FORMAT}")
    size = int(packed["image_size"])
    if size != image_size:
      raise ValueError(
        f"{path}: faces packed at {size} px; config.data.image_size is "
        f"{image_size} (pack again at that size)"
      )
    frame = float(packed["landmark_frame"])
    if frame != landmark_frame:
      raise ValueError(
        f"{path}: landmarks packed in a {frame:g} px frame; "
        f"config.data.landmark_frame is {landmark_frame:g}"
      )
    self.labels = packed["label"].astype(np.int32)
    if self.labels.size and (self.labels.min() < 0 or self.labels.max() >= num_classes):
      raise ValueError(
        f"{path}: labels span [{self.labels.min()}, {self.labels.max()}]; "
        f"config.model.sphereface.num_classes is {num_classes}"
      )
    self.images = decode_all(packed["jpeg"], packed["offsets"], size, path)
    self.landmarks = packed["landmarks"].astype(np.float32)
    self.eval_images = decode_all(packed["eval_jpeg"], packed["eval_offsets"], size, path)
    self.eval_labels = packed["eval_label"].astype(np.int32)
    self.eval_landmarks = packed["eval_landmarks"].astype(np.float32)
    if not len(self.images):
      raise ValueError(f"{path}: no packed faces")
    self.seed = seed
    self.skipped: dict[str, str] = {}  # packing reported its own skips
    self._order: tuple[int, np.ndarray] | None = None

  @property
  def num_examples(self) -> int:
    return len(self.images)

  def _permutation(self, epoch: int) -> np.ndarray:
    if self._order is None or self._order[0] != epoch:
      order = np.random.default_rng([self.seed, epoch]).permutation(len(self.images))
      self._order = (epoch, order)
    return self._order[1]

  def batch(
    self, step: int, batch_size: int, split: str = "train", shard=(0, 1)
  ) -> dict[str, np.ndarray]:
    """Rows of global batch `step` for process shard (index, count); split
    'eval' is a fixed batch of the packed evaluation faces."""
    index, count = shard
    local = batch_size // count
    rows = np.arange(index * local, (index + 1) * local)
    if split == "eval":
      if len(self.eval_images):
        pick = rows % len(self.eval_images)
        return self._rows(self.eval_images, self.eval_labels, self.eval_landmarks, pick)
      pick = rows % len(self.images)
    else:
      n = len(self.images)
      positions = step * batch_size + rows
      pick = np.array([self._permutation(int(p) // n)[int(p) % n] for p in positions])
    return self._rows(self.images, self.labels, self.landmarks, pick)

  @staticmethod
  def _rows(images, labels, landmarks, pick):
    return {
      "image": pixels.to_unit(images[pick]),
      "label": labels[pick],
      "landmarks": landmarks[pick],
    }
