"""Packing real LFW faces from two roots, and the packed source's batches."""

import json
import pathlib

import numpy as np
import pytest

from configs import lfw
from fit_jax.data import input_pipeline, pack, packed_faces

from ..conftest import DATA

ROOT = pathlib.Path(__file__).resolve().parents[2]
SUBSET, REST = DATA / "lfw_subset", DATA / "lfw_rest"

pytestmark = pytest.mark.skipif(
  not (SUBSET / "lfw").is_dir() or not (REST / "lfw").is_dir(),
  reason=f"real LFW faces not found under FIT_DATA={DATA}",
)


def _fold1_people() -> set[str]:
  config = lfw.get_config()
  config.data.exclude_pairs = str(SUBSET / "pairs.txt")
  return input_pipeline.excluded_people(config.data)


def small_lfw_config(tmp_path, per_root: int = 6, fold1: int = 3):
  """configs/lfw.py over a few lines of each landmark file: `per_root`
  training faces from each LFW folder, and `fold1` fold-1 people."""
  fold1_people = _fold1_people()
  files = []
  for name, root in (("lfw_subset", SUBSET), ("lfw_rest", REST)):
    lines = (ROOT / "data" / f"{name}_landmarks.txt").read_text().splitlines()
    train = [line for line in lines if line.split("/")[0] not in fold1_people][:per_root]
    held_out = [line for line in lines if line.split("/")[0] in fold1_people][:fold1]
    path = tmp_path / f"{name}.txt"
    path.write_text("\n".join(train + held_out) + "\n")
    files.append(str(path))
  config = lfw.get_config()
  config.data.root = f"{SUBSET / 'lfw'},{REST / 'lfw'}"
  config.data.landmarks = ",".join(files)
  config.data.exclude_pairs = str(SUBSET / "pairs.txt")
  return config


def test_fold_one_exclusion_and_two_roots():
  people = _fold1_people()
  assert len(people) == 435  # lfw_subset/README.md
  config = lfw.get_config()
  config.data.exclude_folds = ""
  config.data.exclude_pairs = str(SUBSET / "pairs.txt")
  assert len(input_pipeline.excluded_people(config.data)) > 4000  # all ten folds
  config.data.exclude_folds = "11"
  with pytest.raises(ValueError, match="exclude_folds='11'"):
    input_pipeline.excluded_people(config.data)


def test_two_roots_label_people_jointly(tmp_path):
  config = small_lfw_config(tmp_path, per_root=40, fold1=0)
  source = input_pipeline.build_source(config)
  roots = {r.root for r in source.records}
  assert roots == {str(SUBSET / "lfw"), str(REST / "lfw")}
  assert not {r.relpath.split("/")[0] for r in source.records} & _fold1_people()
  by_person = {}
  for r in source.records:
    by_person.setdefault(r.relpath.split("/")[0], set()).add(r.label)
  assert all(len(labels) == 1 for labels in by_person.values())
  names = sorted(by_person)
  assert [next(iter(by_person[n])) for n in names] == sorted(
    next(iter(by_person[n])) for n in names
  )
  batch = source.batch(0, 8)
  assert batch["image"].shape == (8, 64, 64, 3)
  # Mismatched roots and landmark files are one clear line.
  config.data.landmarks = config.data.landmarks.split(",")[0]
  with pytest.raises(ValueError, match="2 data roots but 1 landmark files"):
    input_pipeline.build_source(config)


def test_pack_then_packed_batches(tmp_path):
  config = small_lfw_config(tmp_path)
  out = tmp_path / "pack"
  report = pack.pack(
    config, str(out), quality=90, facenet_mode="int8", num_eval=2, agreement_faces=4
  )
  assert report["faces"] == 12 and report["eval_faces"] == 2 and not report["skipped"]
  assert report["jpeg_psnr_db"] > 30
  # int8 FaceNet agrees with the float32 graph on real packed faces.
  assert report["facenet"]["faces"] == 4 and report["facenet"]["cosine_min"] > 0.998
  assert json.loads((out / "pack.json").read_text())["faces"] == 12
  assert (out / "facenet.int8.npz").stat().st_size < 25e6

  folder = input_pipeline.build_source(config)
  packed = packed_faces.PackedFaces(
    str(out / "faces.npz"),
    image_size=64,
    landmark_frame=250.0,
    num_classes=config.model.sphereface.num_classes,
    seed=3,
  )
  assert packed.num_examples == folder.num_examples == 12
  # Every packed face is its folder face, within the JPEG round trip.
  by_label = {}
  for r in folder.records:
    image, _ = folder.read(r)
    by_label.setdefault(int(r.label), []).append(image)
  for image, label in zip(packed.images, packed.labels):
    x = image.astype(np.float32) / 127.5 - 1.0
    assert min(np.abs(x - f).mean() for f in by_label[int(label)]) < 0.03

  # Batches: a pure function of (seed, step); each epoch visits every face
  # once; process shards are the global batch's contiguous slices.
  one_epoch = np.concatenate([packed.batch(s, 4)["label"] for s in range(3)])
  assert sorted(one_epoch) == sorted(packed.labels)
  again = packed_faces.PackedFaces(
    str(out / "faces.npz"),
    image_size=64,
    landmark_frame=250.0,
    num_classes=config.model.sphereface.num_classes,
    seed=3,
  )
  np.testing.assert_array_equal(packed.batch(7, 4)["image"], again.batch(7, 4)["image"])
  whole = packed.batch(5, 4)
  halves = [packed.batch(5, 4, shard=(i, 2)) for i in range(2)]
  for key in whole:
    np.testing.assert_array_equal(whole[key], np.concatenate([h[key] for h in halves]))
  assert whole["image"].dtype == np.float32 and whole["image"].min() >= -1.0
  assert packed.batch(0, 4, "eval")["image"].shape == (4, 64, 64, 3)

  with pytest.raises(ValueError, match="packed at 64 px; config.data.image_size is 128"):
    packed_faces.PackedFaces(
      str(out / "faces.npz"), image_size=128, landmark_frame=250.0, num_classes=10_000
    )
  with pytest.raises(ValueError, match="config.model.sphereface.num_classes is 2"):
    packed_faces.PackedFaces(
      str(out / "faces.npz"), image_size=64, landmark_frame=250.0, num_classes=2
    )
  with pytest.raises(FileNotFoundError, match="config.data.root="):
    packed_faces.PackedFaces(
      str(out / "none.npz"), image_size=64, landmark_frame=250.0, num_classes=2
    )
