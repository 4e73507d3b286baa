"""Input pipeline on real JPEGs: formats, bad records, determinism, LFW."""

import os
import pathlib
import shutil

import numpy as np
import pytest
from PIL import Image

from configs import lfw_subset, tiny
from fit_jax.data import input_pipeline
from fit_jax.training import batches, train

from ..conftest import DATA

pytestmark = pytest.mark.real_faces

LFW = DATA / "lfw_subset" / "lfw"
ROOT = pathlib.Path(__file__).resolve().parents[2]
POINTS = "97 114 142 127 110 147 100 180 140 176"


@pytest.fixture()
def folder(tmp_path):
  """A small LFW-layout folder with real faces and every awkward format."""
  people = sorted(os.listdir(LFW))[:2]
  lines = []
  for person in people:
    (tmp_path / person).mkdir()
    for name in sorted(os.listdir(LFW / person))[:2]:
      shutil.copy(LFW / person / name, tmp_path / person / name)
      lines.append(f"{person}/{name} {POINTS}")
  face = Image.open(LFW / people[0] / sorted(os.listdir(LFW / people[0]))[0])
  odd = tmp_path / "Odd_Person"
  odd.mkdir()
  face.convert("CMYK").save(odd / "cmyk.jpg")
  face.convert("L").save(odd / "gray.png")
  face.convert("RGBA").save(odd / "alpha.png")
  Image.fromarray((np.asarray(face.convert("L"), np.uint16) * 257)).save(odd / "deep.png")
  face.resize((500, 500)).save(odd / "big.jpg")
  doubled = " ".join(str(2 * float(v)) for v in POINTS.split())
  lines += [f"Odd_Person/{n} {POINTS}" for n in ("cmyk.jpg", "gray.png", "alpha.png", "deep.png")]
  lines.append(f"Odd_Person/big.jpg {doubled}")
  return tmp_path, lines


def _write(path, lines):
  path.write_text("".join(line + "\n" for line in lines))
  return str(path)


def _source(root, landmark_file, **kw):
  kw.setdefault("on_bad_record", "error")
  return input_pipeline.FaceFolder(
    str(root),
    landmark_file,
    with_labels=False,
    image_size=64,
    landmark_frame=250.0,
    num_classes=10,
    **kw,
  )


def test_every_format_decodes_and_landmarks_follow_image_size(folder, tmp_path):
  root, lines = folder
  source = _source(root, _write(tmp_path / "lm.txt", lines))
  examples = [source.example(i) for i in range(source.num_examples)]
  for e in examples:
    assert e["image"].shape == (64, 64, 3) and e["image"].dtype == np.float32
    assert -1 <= e["image"].min() and e["image"].max() <= 1 and e["image"].std() > 0.05
  by_path = {r.relpath: ex for r, ex in zip(source.records, examples)}
  # The 500x500 image's doubled landmarks land on the same 250-frame points.
  np.testing.assert_allclose(
    by_path["Odd_Person/big.jpg"]["landmarks"], by_path["Odd_Person/cmyk.jpg"]["landmarks"]
  )
  # Labels are folder indices, the same for one person.
  labels = [r.label for r in source.records]
  assert labels[0] == labels[1] and labels[0] != labels[2]


def test_bad_records_error_names_file_or_skip_counts(folder, tmp_path):
  root, lines = folder
  (root / "Odd_Person" / "truncated.jpg").write_bytes(
    (LFW.parent / "lfw" / lines[0].split()[0]).read_bytes()[:900]
  )
  (root / "Odd_Person" / "text.jpg").write_text("not an image")
  bad = lines + [
    f"Odd_Person/truncated.jpg {POINTS}",
    f"Odd_Person/text.jpg {POINTS}",
    "Odd_Person/missing.jpg 1 2 3",
    f"Odd_Person/nan.jpg {POINTS.replace('97', 'nan')}",
  ]
  landmark_file = _write(tmp_path / "bad.txt", bad)
  with pytest.raises(input_pipeline.BadRecordError, match=r"bad.txt:\d+: expected 11 fields"):
    _source(root, landmark_file)
  source = _source(root, landmark_file, on_bad_record="skip")
  assert len(source.problems) == 2 and any("non-finite" in p for p in source.problems)
  batch = {k: [] for k in ("image",)}
  for i in range(source.num_examples):
    batch["image"].append(source.example(i)["image"])
  assert set(source.skipped) == {"Odd_Person/truncated.jpg", "Odd_Person/text.jpg"}
  assert "unreadable image" in source.skipped["Odd_Person/text.jpg"]
  strict = _source(root, _write(tmp_path / "b2.txt", [f"Odd_Person/text.jpg {POINTS}"]))
  with pytest.raises(input_pipeline.BadRecordError, match="text.jpg: unreadable image"):
    strict.example(0)


def test_unknown_identity_and_missing_paths(folder, tmp_path):
  root, lines = folder
  casia = _write(tmp_path / "casia.txt", [f"{lines[0].split()[0]} 99 {POINTS}"])
  with pytest.raises(input_pipeline.BadRecordError, match="label 99 is outside"):
    input_pipeline.FaceFolder(
      str(root), casia, with_labels=True, image_size=64, landmark_frame=250.0, num_classes=10
    )
  with pytest.raises(FileNotFoundError, match="landmark file"):
    _source(root, str(tmp_path / "nope.txt"))
  with pytest.raises(FileNotFoundError, match="config.data.root"):
    _source(tmp_path / "nowhere", casia)


def test_batches_are_a_pure_function_of_step(folder, tmp_path):
  root, lines = folder
  landmark_file = _write(tmp_path / "lm.txt", lines)
  a, b = _source(root, landmark_file), _source(root, landmark_file)
  for step in (0, 3, 17):
    x, y = a.batch(step, 4), b.batch(step, 4)
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
  # Process shards are slices of the global batch.
  full = a.batch(5, 4)
  half = a.batch(5, 4, shard=(1, 2))
  np.testing.assert_array_equal(half["image"], full["image"][2:])
  batches.check_batch(full, tiny.get_config(), num_devices=4)


def test_landmark_file_of_the_lfw_subset_is_committed_and_complete():
  path = ROOT / "data" / "lfw_subset_landmarks.txt"
  records, problems = input_pipeline.parse_landmark_file(str(path), with_labels=False)
  assert not problems and len(records) > 3400
  failures = (ROOT / "data" / "lfw_subset_landmarks.txt.failures.txt").read_text().splitlines()
  assert len(records) + len(failures) == 3487
  # MTCNN eyes sit above the nose, left of right, on the 250x250 frame.
  lm = np.stack([r.landmarks for r in records])
  assert (lm[:, 0, 0] < lm[:, 1, 0]).mean() > 0.99
  assert ((lm > 0) & (lm < 250)).all(axis=(1, 2)).mean() > 0.99


def test_tiny_training_on_real_lfw_faces(tmp_path):
  """The tiny config trained on the first 10 people of the LFW subset
  (their labels fit its 10 classes): real JPEGs, aligned by the committed
  landmarks, through the same compiled steps as the synthetic runs."""
  lines = (ROOT / "data" / "lfw_subset_landmarks.txt").read_text().splitlines()
  people = sorted({line.split("/")[0] for line in lines})[:10]
  landmarks = tmp_path / "landmarks.txt"
  landmarks.write_text("".join(f"{line}\n" for line in lines if line.split("/")[0] in people))
  config = tiny.get_config()
  subset = lfw_subset.get_config().data
  config.data.source = subset.source
  config.data.landmark_frame = subset.landmark_frame
  config.data.on_bad_record = subset.on_bad_record
  config.data.root = str(LFW)
  config.data.landmarks = str(landmarks)
  workdir = tmp_path / "run"
  state = train.train_and_evaluate(config, str(workdir))
  assert int(state.step) == 2
  assert (workdir / "samples" / "step_0000002.png").exists()


def test_casia_identity_split_matches_the_reference():
  records = [input_pipeline.Record(f"{y}/x.jpg", y, np.zeros((5, 2)), "f:1") for y in range(10574)]
  sizes = {s: len(input_pipeline.casia_split(records, s)) for s in ("train", "test", "val")}
  assert sizes == {"train": 8456, "test": 9515 - 8456, "val": 10574 - 9515}
  with pytest.raises(ValueError, match="config.data.split"):
    input_pipeline.casia_split(records, "dev")


def test_tfds_lfw_builder_source(tmp_path):
  """The real TFDS `lfw` builder prepares (array_record) three identities of
  the subset; only its download is pointed at the local copy, since lfw.tgz
  cannot be fetched here. The landmark tool reads the TFDS records, and the
  `lfw_tfds` source gives the same faces as the folder source."""
  tfds = pytest.importorskip("tensorflow_datasets")
  pytest.importorskip("mtcnn")
  import unittest.mock

  from fit_jax.data import landmarks

  extracted = tmp_path / "extracted"
  for name in ("Aaron_Peirsol", "Abel_Pacheco", "Zico"):
    shutil.copytree(LFW / name, extracted / "lfw" / name)
  data_dir = tmp_path / "tfds"
  with unittest.mock.patch.object(
    tfds.download.DownloadManager, "download_and_extract", return_value=str(extracted)
  ):
    tfds.builder("lfw", data_dir=str(data_dir)).download_and_prepare(file_format="array_record")
  lines, failures = landmarks.detect_tfds("lfw", str(data_dir))
  assert not failures and len(lines) == 11
  landmark_file = tmp_path / "lfw_tfds_landmarks.txt"
  landmark_file.write_text("".join(line + "\n" for line in lines))
  config = tiny.get_config()
  config.data.source = "lfw_tfds"
  config.data.root = str(data_dir)
  config.data.landmarks = str(landmark_file)
  config.data.image_size = 128
  source = input_pipeline.build_source(config)
  assert source.num_examples == 11
  folder_records, _ = input_pipeline.parse_landmark_file(
    str(ROOT / "data" / "lfw_subset_landmarks.txt"), with_labels=False
  )
  folder_points = {r.relpath: r.landmarks for r in folder_records}
  for record in source.records[:4]:
    label, index = record.relpath.split("/")
    example = source.example(source.records.index(record))
    # The same photo, found by its landmarks among the label's files.
    match = min(
      (p for p in folder_points if p.startswith(label + "/")),
      key=lambda p: np.abs(folder_points[p] - record.landmarks).sum(),
    )
    assert np.abs(folder_points[match] - record.landmarks).max() <= 2.0
    image, _ = input_pipeline.load_image(str(LFW / match), 128)
    assert np.abs(example["image"] - image).mean() < 0.02
  # A landmark file from another preparation is named as such.
  bad = tmp_path / "other.txt"
  label, index = source.records[0].relpath.split("/")
  bad.write_text(lines[0].replace(f"{label}/{index}", f"Zzz/{index}", 1) + "\n")
  config.data.landmarks = str(bad)
  config.model.sphereface.num_classes = 1000
  with pytest.raises(input_pipeline.BadRecordError, match="another preparation"):
    input_pipeline.build_source(config).example(0)
  config.data.root = str(tmp_path / "nothing")
  with pytest.raises(FileNotFoundError, match="not prepared"):
    input_pipeline.build_source(config)


def test_ffhq_source_reads_the_validation_list(tmp_path):
  """FFHQ's layout: validation_paths.txt lists the val thumbnails; labels 0."""
  root = tmp_path / "ffhq-dataset"
  for i, src in enumerate(sorted(LFW.glob("Abel_Pacheco/*.jpg"))[:3]):
    (root / "thumbnails128x128" / "00000").mkdir(parents=True, exist_ok=True)
    Image.open(src).resize((128, 128)).save(root / "thumbnails128x128" / "00000" / f"0000{i}.png")
  (root / "validation_paths.txt").write_text(
    "thumbnails128x128/00000/00000.png\nthumbnails128x128/00000/00002.png\n"
  )
  points = " ".join(["40 50 80 50 60 70 45 90 75 90"])
  (tmp_path / "ffhq_landmarks.txt").write_text(
    "".join(f"thumbnails128x128/00000/0000{i}.png {points}\n" for i in range(3))
  )
  config = tiny.get_config()
  config.data.source = "ffhq"
  config.data.root = str(root)
  config.data.landmarks = str(tmp_path / "ffhq_landmarks.txt")
  config.data.landmark_frame = 128.0
  source = input_pipeline.build_source(config)
  assert [r.relpath for r in source.records] == [
    "thumbnails128x128/00000/00000.png",
    "thumbnails128x128/00000/00002.png",
  ]
  batch = source.batch(0, 4)
  assert batch["image"].shape == (4, 64, 64, 3) and set(batch["label"]) == {0}
  config.data.landmarks = ""
  with pytest.raises(ValueError, match="ffhq needs a landmark file"):
    input_pipeline.build_source(config)


def test_huge_images_are_refused_before_decoding(tmp_path):
  Image.new("L", (8000, 6000)).save(tmp_path / "huge.png")  # 48 MP
  with pytest.raises(
    input_pipeline.BadRecordError, match="huge.png: image of 8000x6000 pixels is too large"
  ):
    input_pipeline.load_image(str(tmp_path / "huge.png"), 64)
