"""Input data: face folders with landmark files, and synthetic faces.

Every source is a pure function of (seed, step) -> batch, built on grain's
random-access MapDataset (shuffle per epoch, repeat, batch): a resumed run
sees exactly the batches an uninterrupted run would, with no iterator state
beyond the step. Preprocessing is the reference's (PIL RGB, bicubic resize to
the model size, [-1, 1]); landmarks are rescaled from each image's own size
into `config.data.landmark_frame`, so images of any size align correctly.

The synthetic source (the project's own data, used by the demo and tests):

Procedural faces with identity labels and exact 5-point landmarks (left eye,
right eye, nose, left and right mouth corners, as MTCNN's order), rendered
in a 250x250 frame like CASIA-WebFace/LFW and resized to the model's size.
Each identity fixes skin and hair colour, face shape and feature spacing;
each image jitters pose (scale, rotation, shift), lighting and background,
so the identity losses have something real to learn and the demo needs no
download. Batches are a pure function of (seed, step): a resumed run sees
exactly the batches an uninterrupted one would.
"""

import dataclasses
import os

import numpy as np
from PIL import Image

from fit_jax.data.pairs import read_pairs
from fit_jax.data.photos import MAX_PIXELS, preprocess, to_rgb

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
    [
      eyes[0],
      eyes[1],
      (0.0, p["nose_y"]),
      (-p["mouth_dx"], p["mouth_y"]),
      (p["mouth_dx"], p["mouth_y"]),
    ]
  )
  noise = rng.normal(0, 3, img.shape)
  return np.clip(img + noise, 0, 255).astype(np.uint8), landmarks.astype(np.float32)


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

  @property
  def num_examples(self) -> int | None:
    return None  # unbounded: set config.train.num_steps

  def batch(
    self, step: int, batch_size: int, split: str = "train", shard=(0, 1)
  ) -> dict[str, np.ndarray]:
    """Rows of the batch of a step for process shard (index, count); split
    'eval' draws from a separate stream."""
    rng = np.random.default_rng([self.seed, step, {"train": 3, "eval": 5}[split]])
    labels = rng.integers(0, self.num_identities, batch_size)
    samples = rng.integers(0, 2**31, batch_size)
    index, count = shard
    local = batch_size // count
    labels = labels[index * local : (index + 1) * local]
    samples = samples[index * local : (index + 1) * local]
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


# ----------------------------------------------------------- face folders


class BadRecordError(ValueError):
  """A record that cannot be used, named by file and line or path."""


@dataclasses.dataclass(frozen=True)
class Record:
  relpath: str
  label: int
  landmarks: np.ndarray  # [5, 2] pixels of the original image
  where: str  # "file:line" for messages
  root: str = ""  # folder relpath starts from (several-root sources)


def parse_landmark_file(
  path: str, with_labels: bool, on_bad_record: str = "error"
) -> tuple[list[Record], list[str]]:
  """Reads the reference's landmark file formats.

  `relpath x1 y1 ... x5 y5` (LFW) or `relpath label x1 ... y5` (CASIA).
  Without labels, an image's label is the index of its identity folder
  among the sorted folder names.

  Returns:
    (records, problems): problems are "file:line: reason" of skipped lines
    when on_bad_record == 'skip'.

  Raises:
    BadRecordError: the first bad line, when on_bad_record == 'error'.
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: landmark file not found")
  records, problems = [], []
  expected = 12 if with_labels else 11
  with open(path) as f:
    for number, line in enumerate(f, start=1):
      if not line.strip():
        continue
      fields = line.split()
      where = f"{path}:{number}"
      try:
        if len(fields) != expected:
          raise BadRecordError(
            f"{where}: expected {expected} fields "
            f"({'path label' if with_labels else 'path'} + 10 coordinates), got {len(fields)}"
          )
        label = int(fields[1]) if with_labels else -1
        coords = np.array([float(v) for v in fields[-10:]], np.float32).reshape(5, 2)
        if not np.all(np.isfinite(coords)):
          raise BadRecordError(f"{where}: non-finite landmark coordinates")
      except ValueError as e:
        error = e if isinstance(e, BadRecordError) else BadRecordError(f"{where}: {e}")
        if on_bad_record == "error":
          raise error from None
        problems.append(str(error))
        continue
      records.append(Record(fields[0], label, coords, where))
  if not with_labels:
    names = sorted({r.relpath.split("/")[0] for r in records})
    index = {n: i for i, n in enumerate(names)}
    records = [dataclasses.replace(r, label=index[r.relpath.split("/")[0]]) for r in records]
  return records, problems


def casia_split(records: list[Record], split: str) -> list[Record]:
  """The reference's CASIA identity split (datasets/casia.py).

  min_test_id = max_label // 5 * 4; test_end_id = (n_ids - min_test_id) // 2
  + min_test_id; train < min_test_id <= test < test_end_id <= val. With all
  10,574 identities: train [0, 8456), test [8456, 9515), val [9515, 10574).
  """
  if split not in ("train", "test", "val", "all"):
    raise ValueError(f"config.data.split={split!r}: use train, test, val or all")
  if split == "all":
    return records
  labels = [r.label for r in records]
  max_label, n_ids = max(labels), len(set(labels))
  min_test = max_label // 5 * 4
  test_end = (n_ids - min_test) // 2 + min_test
  keep = {
    "train": lambda y: y < min_test,
    "test": lambda y: min_test <= y < test_end,
    "val": lambda y: y >= test_end,
  }[split]
  return [r for r in records if keep(r.label)]


def load_image(path: str, size: int) -> tuple[np.ndarray, tuple[int, int]]:
  """Decodes any PIL-readable image to [size, size, 3] float32 in [-1, 1].

  Grayscale, CMYK, palette, alpha and 16-bit images are converted to RGB as
  the reference's PIL `.convert('RGB')`. Returns the image and its original
  (width, height).

  Raises:
    BadRecordError: naming the file, for unreadable or truncated data.
  """
  try:
    with Image.open(path) as im:
      if im.width * im.height > MAX_PIXELS:  # refused before decoding
        raise BadRecordError(
          f"{path}: image of {im.width}x{im.height} pixels is too large "
          f"(over {MAX_PIXELS // 10**6} MP)"
        )
      im.load()
      original = im.size
      rgb = to_rgb(im)
  except BadRecordError:
    raise
  except FileNotFoundError:
    raise BadRecordError(f"{path}: file not found") from None
  except Exception as e:  # PIL raises many types for bad data
    raise BadRecordError(f"{path}: unreadable image ({type(e).__name__}: {e})") from None
  if min(original) < 8:
    raise BadRecordError(f"{path}: image of {original[0]}x{original[1]} pixels is too small")
  return preprocess(np.asarray(rgb), size), original


def _read_records(roots, files, with_labels, on_bad_record):
  """Records of (root, landmark file) pairs, labelled jointly (one file
  gives parse_landmark_file's own labels)."""
  records, problems = [], []
  for folder, path in zip(roots, files):
    found, bad = parse_landmark_file(path, with_labels, on_bad_record)
    records += [dataclasses.replace(r, root=folder) for r in found]
    problems += bad
  if not with_labels:
    names = sorted({r.relpath.split("/")[0] for r in records})
    index = {n: i for i, n in enumerate(names)}
    records = [dataclasses.replace(r, label=index[r.relpath.split("/")[0]]) for r in records]
  return records, problems


class FaceFolder:
  """Batches from an image folder with a landmark file, per step.

  Args:
    root: folder the landmark file's relative paths start from, or a list
      of folders (e.g. LFW split over two folders), one per landmark file.
    landmark_file: the reference's format (see parse_landmark_file), or a
      list of them, one per root. Without labels in the files, an image's
      label is the index of its identity folder among the sorted folder
      names of all the files together, so a person with images under two
      roots keeps one label.
    with_labels: CASIA format (labels in the file) or LFW (labels from folders).
    image_size: model input size.
    landmark_frame: frame the models' alignment expects (config.data).
    num_classes: labels must lie in [0, num_classes).
    on_bad_record: 'error' raises naming the file/line; 'skip' replaces the
      record by the next good one (deterministically) and counts it.
    seed: shuffling seed (a new permutation every epoch).
    identities: optional set of identity folder names to keep.
    exclude_identities: identity folder names to leave out (e.g. everyone in
      an evaluation's pairs file, config.data.exclude_pairs).
    ffhq_paths: FFHQ's validation_paths.txt: keep only the images it lists
      (relative to root) and label them all 0, as the reference's FFHQ set
      (which has no identities).
    split: for labelled (CASIA) files, the reference identity split
      (casia_split): train, test, val or all.
  """

  def __init__(
    self,
    root,
    landmark_file,
    *,
    with_labels,
    image_size,
    landmark_frame,
    num_classes,
    on_bad_record="error",
    seed=0,
    identities=None,
    exclude_identities=(),
    split="all",
    ffhq_paths=None,
  ):
    if on_bad_record not in ("error", "skip"):
      raise ValueError(f"config.data.on_bad_record={on_bad_record!r}: use 'error' or 'skip'")
    roots = [root] if isinstance(root, str) else list(root)
    files = [landmark_file] if isinstance(landmark_file, str) else list(landmark_file)
    if len(roots) != len(files):
      raise ValueError(
        f"{len(roots)} data roots but {len(files)} landmark files "
        "(config.data.root, config.data.landmarks): give one file per root"
      )
    for folder in roots:
      if not os.path.isdir(folder):
        raise FileNotFoundError(f"config.data.root={folder!r} is not a folder")
    records, self.problems = _read_records(roots, files, with_labels, on_bad_record)
    if identities is not None:
      records = [r for r in records if r.relpath.split("/")[0] in identities]
    if ffhq_paths:
      if not os.path.isfile(ffhq_paths):
        raise FileNotFoundError(f"{ffhq_paths}: FFHQ's validation_paths.txt not found")
      with open(ffhq_paths) as f:
        listed = {os.path.normpath(line.strip()) for line in f if line.strip()}
      records = [
        dataclasses.replace(r, label=0) for r in records if os.path.normpath(r.relpath) in listed
      ]
    if exclude_identities:
      excluded = set(exclude_identities)
      records = [r for r in records if r.relpath.split("/")[0] not in excluded]
    if with_labels and records:
      records = casia_split(records, split)
    good = []
    for r in records:
      if not 0 <= r.label < num_classes:
        message = f"{r.where}: label {r.label} is outside [0, {num_classes}) (unknown identity)"
        if on_bad_record == "error":
          raise BadRecordError(message)
        self.problems.append(message)
        continue
      good.append(r)
    if not good:
      raise ValueError(f"{', '.join(files)}: no usable records")
    self.records = good
    self.root = roots[0]
    self.image_size = image_size
    self.landmark_frame = landmark_frame
    self.on_bad_record = on_bad_record
    self.skipped: dict[str, str] = {}
    self.seed = seed
    # Imported here, not at the top: the packed source (packed_faces) and
    # the synthetic one run on machines without grain.
    import grain  # noqa: PLC0415

    self.dataset = grain.MapDataset.range(len(good)).shuffle(seed=seed).repeat()

  @property
  def num_examples(self) -> int:
    return len(self.records)

  def read(self, record: Record) -> tuple[np.ndarray, tuple[int, int]]:
    """The record's image, preprocessed, and its original (width, height)."""
    return load_image(os.path.join(record.root or self.root, record.relpath), self.image_size)

  def example(self, index: int) -> dict[str, np.ndarray]:
    """One decoded record; bad ones are replaced by the next in 'skip' mode."""
    n = len(self.records)
    for offset in range(min(n, 64)):
      record = self.records[(index + offset) % n]
      try:
        image, (width, height) = self.read(record)
      except BadRecordError as e:
        if self.on_bad_record == "error":
          raise
        self.skipped[record.relpath] = str(e)
        continue
      scale = np.array([self.landmark_frame / width, self.landmark_frame / height], np.float32)
      return {
        "image": image,
        "label": np.int32(record.label),
        "landmarks": record.landmarks * scale,
      }
    raise BadRecordError(f"{self.root}: 64 consecutive unreadable records near index {index}")

  def batch(
    self, step: int, batch_size: int, split: str = "train", shard=(0, 1)
  ) -> dict[str, np.ndarray]:
    """Rows of global batch `step` for process shard (index, count).

    Split 'eval' is a fixed, unshuffled batch. Each process decodes only its
    contiguous slice of the global batch.
    """
    index, count = shard
    local = batch_size // count
    rows = range(index * local, (index + 1) * local)
    if split == "eval":
      indices = [i % len(self.records) for i in rows]
    else:
      indices = [self.dataset[step * batch_size + i] for i in rows]
    examples = [self.example(int(i)) for i in indices]
    return {k: np.stack([e[k] for e in examples]) for k in examples[0]}


class TfdsFaces(FaceFolder):
  """A TFDS image dataset with identity labels (e.g. `lfw`) plus a landmark file.

  TFDS records carry no file names, so the landmark file made by
  `python -m fit_jax.landmarks --tfds NAME` names each record
  `<label>/<index>` (its index in the prepared ArrayRecord split, a fixed
  order for a given dataset version); a record whose label differs from the
  line's is reported as from another preparation. Needs the dataset prepared
  in the array_record format (`tfds build lfw --file_format=array_record`;
  TFDS downloads lfw.tgz itself) under `data_dir`; nothing is downloaded here.
  """

  def __init__(self, name: str, data_dir: str, landmark_file: str, **kwargs):
    self.source = open_tfds(name, data_dir)
    self.name = name
    super().__init__(data_dir, landmark_file, with_labels=False, **kwargs)

  def read(self, record: Record) -> tuple[np.ndarray, tuple[int, int]]:
    label, _, index = record.relpath.rpartition("/")
    try:
      example = self.source[int(index)]
    except (ValueError, IndexError):
      raise BadRecordError(
        f"{record.where}: {record.relpath!r} is not <label>/<index> of the {len(self.source)} "
        f"records of TFDS {self.name!r}"
      ) from None
    found = example["label"]
    found = found.decode() if isinstance(found, bytes) else str(found)
    if found != label:
      raise BadRecordError(
        f"{record.where}: TFDS {self.name!r} record {index} is {found!r}, not {label!r} "
        "(the landmark file was made from another preparation of the dataset)"
      )
    image = np.asarray(example["image"])
    if image.ndim == 2:
      image = np.repeat(image[..., None], 3, axis=-1)
    return preprocess(image[..., :3], self.image_size), (image.shape[1], image.shape[0])


def open_tfds(name: str, data_dir: str):
  """Random-access records of a prepared TFDS dataset's train split."""
  try:
    import tensorflow_datasets as tfds  # noqa: PLC0415  (export extra)
  except ImportError as e:
    raise ImportError(f"TFDS sources need tensorflow-datasets (the `export` extra): {e}") from None
  try:
    return tfds.data_source(name, split="train", data_dir=data_dir, download=False)
  except Exception as e:  # TFDS raises several types for a missing preparation
    raise FileNotFoundError(
      f"TFDS {name!r} is not prepared (array_record) under {data_dir!r}: run "
      f"`tfds build {name} --data_dir {data_dir} --file_format=array_record` "
      f"on a machine with internet ({type(e).__name__})"
    ) from None


def _pair_identities(pairs_file: str, folds: str = "") -> set[str]:
  """Names of everyone in an LFW pairs file (empty path: nobody), in the
  comma-separated `folds` only (empty: every fold)."""
  if not pairs_file:
    return set()
  try:
    wanted = {int(v) for v in folds.split(",") if v.strip()}
  except ValueError:
    raise ValueError(
      f"config.data.exclude_folds={folds!r}: expected fold numbers like '1' or '1,2'"
    ) from None
  pairs = read_pairs(os.path.expanduser(pairs_file))
  if wanted - {pair.fold for pair in pairs}:
    raise ValueError(
      f"config.data.exclude_folds={folds!r}: {pairs_file} has folds "
      f"{sorted({pair.fold for pair in pairs})}"
    )
  return {
    p.split("/")[0]
    for pair in pairs
    if not wanted or pair.fold in wanted
    for p in (pair.first, pair.second)
  }


def split_paths(value: str) -> list[str]:
  """A config field of comma-separated paths, user-expanded."""
  return [os.path.expanduser(v.strip()) for v in value.split(",") if v.strip()]


def excluded_people(data) -> set[str]:
  """Everyone config.data leaves out (exclude_pairs, exclude_folds)."""
  return _pair_identities(data.get("exclude_pairs", ""), data.get("exclude_folds", ""))


def build_source(config):
  """The configured source (config.data.source)."""
  data = config.data
  if data.source == "synthetic":
    return SyntheticFaces(config.model.sphereface.num_classes, data.image_size, config.seed)
  if data.source == "packed":
    from fit_jax.data import packed_faces  # noqa: PLC0415

    return packed_faces.PackedFaces(
      os.path.expanduser(data.root),
      image_size=data.image_size,
      landmark_frame=data.landmark_frame,
      num_classes=config.model.sphereface.num_classes,
      seed=config.seed,
    )
  if data.source in ("lfw_folder", "casia", "folder"):
    roots = split_paths(data.root) or [data.root]
    landmarks = split_paths(data.landmarks) or [
      os.path.join(
        os.path.dirname(roots[0].rstrip("/")),
        "casia_landmark.txt" if data.source == "casia" else "lfw_landmark.txt",
      )
    ]
    return FaceFolder(
      roots,
      landmarks,
      with_labels=data.source == "casia",
      image_size=data.image_size,
      landmark_frame=data.landmark_frame,
      num_classes=config.model.sphereface.num_classes,
      on_bad_record=data.on_bad_record,
      seed=config.seed,
      split=data.split if data.source == "casia" else "all",
      exclude_identities=excluded_people(data),
    )
  if data.source == "lfw_tfds":
    if not data.landmarks:
      raise ValueError(
        "config.data.landmarks: lfw_tfds needs a landmark file "
        "(python -m fit_jax.landmarks --tfds lfw ...)"
      )
    return TfdsFaces(
      "lfw",
      os.path.expanduser(data.root),
      os.path.expanduser(data.landmarks),
      image_size=data.image_size,
      landmark_frame=data.landmark_frame,
      num_classes=config.model.sphereface.num_classes,
      on_bad_record=data.on_bad_record,
      seed=config.seed,
      exclude_identities=excluded_people(data),
    )
  if data.source == "ffhq":
    if not data.landmarks:
      raise ValueError(
        "config.data.landmarks: ffhq needs a landmark file "
        "(python -m fit_jax.landmarks --images <ffhq thumbnails> ...)"
      )
    return FaceFolder(
      os.path.expanduser(data.root),
      os.path.expanduser(data.landmarks),
      with_labels=False,
      image_size=data.image_size,
      landmark_frame=data.landmark_frame,
      num_classes=config.model.sphereface.num_classes,
      on_bad_record=data.on_bad_record,
      seed=config.seed,
      identities=None,
      ffhq_paths=os.path.join(os.path.expanduser(data.root), "validation_paths.txt"),
    )
  raise ValueError(
    f"config.data.source={data.source!r}: use synthetic, lfw_folder, lfw_tfds, casia, "
    "ffhq, folder or packed"
  )
