"""Landmark tool: MTCNN five-point landmarks in the reference's file format.

  python -m fit_jax.landmarks --images DIR --out FILE [--with_labels]
  python -m fit_jax.landmarks --tfds lfw --tfds_data_dir DIR --out FILE

Writes one line per image with a face, `relpath x1 y1 ... x5 y5` (LFW's
`lfw_landmark.txt`), or `relpath label x1 y1 ... x5 y5` with --with_labels
(CASIA's `casia_landmark.txt`; the label is the index of the image's folder
among the sorted identity folders). Points are left eye, right eye, nose,
left and right mouth corner, in pixels of the original image, as the
authors' MTCNN files. Where MTCNN finds several faces, the confident face
(>= 0.9) whose box centre is nearest the image centre is kept (datasets of
this kind centre their subject), else the most confident one. TFDS records
have no file names: with --tfds each line names its record `<label>/<index>`.

Images that cannot be decoded and images without a face are listed by path
with a count on stdout and in FILE.failures.txt; none is dropped silently.
The output is written atomically and never over an image. Needs the `mtcnn`
package (and TensorFlow), the `faces` extra.
"""

import functools
import os
import sys

import numpy as np
from PIL import Image

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
KEYPOINTS = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")


def list_images(root: str) -> list[str]:
  """Relative paths of all images under root, sorted."""
  found = []
  for folder, _, files in os.walk(root):
    for name in files:
      if name.lower().endswith(IMAGE_SUFFIXES):
        found.append(os.path.relpath(os.path.join(folder, name), root))
  return sorted(found)


def choose_face(faces: list[dict], width: int, height: int) -> dict | None:
  """The centred confident face, else the most confident one, else None."""
  if not faces:
    return None
  confident = [f for f in faces if f["confidence"] >= 0.9]
  if confident:

    def distance(face):
      x, y, w, h = face["box"]
      return (x + w / 2 - width / 2) ** 2 + (y + h / 2 - height / 2) ** 2

    return min(confident, key=distance)
  return max(faces, key=lambda f: f["confidence"])


def face_points(face: dict) -> np.ndarray:
  """[5, 2] landmarks in the reference's order."""
  return np.array([face["keypoints"][k] for k in KEYPOINTS], np.float64)


def format_line(relpath: str, points: np.ndarray, label: int | None = None) -> str:
  coords = " ".join(f"{v:g}" for v in points.reshape(-1))
  if " " in relpath:
    raise ValueError(f"{relpath}: paths with spaces cannot be written in this format")
  return f"{relpath} {coords}" if label is None else f"{relpath} {label} {coords}"


def detect_folder(root: str, with_labels: bool, batch: int = 8):
  """Runs MTCNN over a folder.

  Returns:
    (lines, failures): landmark lines, and (relpath, reason) pairs.
  """
  paths = list_images(root)

  def read(relpath):
    with Image.open(os.path.join(root, relpath)) as im:
      return np.asarray(im.convert("RGB"))

  return detect_items([(p, functools.partial(read, p)) for p in paths], with_labels, batch)


def detect_tfds(name: str, data_dir: str, batch: int = 8):
  """Runs MTCNN over a prepared TFDS dataset's train split; records are
  named `<label>/<index>` (input_pipeline.TfdsFaces reads them back)."""
  from fit_jax.data import input_pipeline  # noqa: PLC0415

  source = input_pipeline.open_tfds(name, data_dir)

  def label(index):
    value = source[index]["label"]
    return value.decode() if isinstance(value, bytes) else str(value)

  def read(index):
    image = np.asarray(source[index]["image"])
    return np.repeat(image[..., None], 3, -1) if image.ndim == 2 else image[..., :3]

  items = []
  for index in range(len(source)):
    items.append((f"{label(index)}/{index}", functools.partial(read, index)))
  return detect_items(items, with_labels=False, batch=batch)


def detect_items(items, with_labels: bool, batch: int = 8):
  """MTCNN over (relpath, read) items, read() giving an RGB uint8 array."""
  from mtcnn import MTCNN  # noqa: PLC0415  (TensorFlow; optional extra)

  detector = MTCNN()
  paths = [relpath for relpath, _ in items]
  identities = sorted({p.split(os.sep)[0] for p in paths if os.sep in p})
  label_of = {name: i for i, name in enumerate(identities)}
  lines, failures = [], []
  pending: list[tuple[str, np.ndarray]] = []

  def flush():
    if not pending:
      return
    results = detector.detect_faces([img for _, img in pending])
    if len(pending) == 1 and results and isinstance(results[0], dict):
      results = [results]
    for (relpath, img), faces in zip(pending, results):
      face = choose_face(faces, img.shape[1], img.shape[0])
      if face is None:
        failures.append((relpath, "no face found"))
        continue
      label = label_of.get(relpath.split(os.sep)[0]) if with_labels else None
      if with_labels and label is None:
        failures.append((relpath, "not inside an identity folder"))
        continue
      lines.append(format_line(relpath, face_points(face), label))
    pending.clear()

  for i, (relpath, read) in enumerate(items):
    try:
      img = read()
    except Exception as e:  # any decoding problem is reported per file
      failures.append((relpath, f"unreadable ({type(e).__name__})"))
      continue
    pending.append((relpath, img))
    if len(pending) >= batch:
      flush()
    if (i + 1) % 200 == 0:
      print(f"{i + 1}/{len(paths)} images", file=sys.stderr, flush=True)
  flush()
  return lines, failures
