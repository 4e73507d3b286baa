"""The evaluation suite on real LFW pairs: pairs parsing, baselines, detector
consistency and the report of a tiny checkpoint."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from configs import deanonymize as deanonymize_config
from configs import tiny
from fit_jax.data import pairs as pairs_file
from fit_jax.evaluation import baselines, deanonymize, evaluate, lfw_pairs
from fit_jax.training import train

from ..conftest import DATA

pytestmark = pytest.mark.real_faces

ROOT = pathlib.Path(__file__).resolve().parents[2]
LFW = DATA / "lfw_subset"
LANDMARKS = str(ROOT / "data" / "lfw_subset_landmarks.txt")


def test_pairs_file_parsing(tmp_path):
  pairs = pairs_file.read_pairs(str(LFW / "pairs.txt"))
  assert len(pairs) == 6000 and sum(p.same for p in pairs) == 3000
  assert {p.fold for p in pairs} == set(range(1, 11))
  assert pairs[0] == pairs_file.Pair(
    1, "Abel_Pacheco/Abel_Pacheco_0001.jpg", "Abel_Pacheco/Abel_Pacheco_0004.jpg", True
  )
  covered = pairs_file.read_pairs(str(LFW / "pairs_covered.tsv"))
  assert len(covered) == 1574
  kept, _, counts = lfw_pairs.select(pairs, str(LFW / "lfw"), LANDMARKS)
  # Fold 1 is complete in the subset; the other folds only partly.
  assert sum(p.fold == 1 for p in kept) == 600 and len(kept) == 1574
  assert counts["missing_image"] == 6000 - 1574
  trimmed, _, _ = lfw_pairs.select(pairs, str(LFW / "lfw"), LANDMARKS, [1], limit=10)
  assert len(trimmed) == 10 and sum(p.same for p in trimmed) == 5
  bad = tmp_path / "pairs.txt"
  bad.write_text("10 300\nAbel_Pacheco 1\n")
  with pytest.raises(ValueError, match="pair lines"):
    pairs_file.read_pairs(str(bad))


def test_baselines_by_hand():
  rng = np.random.default_rng(0)
  images = rng.uniform(0, 1, (2, 128, 128, 3)).astype(np.float32)
  points = np.tile(
    np.array([[50, 55], [78, 55], [64, 70], [52, 88], [76, 88]], np.float32), (2, 1, 1)
  )
  top, bottom, left, right = baselines.face_box(points[0], 128)
  assert (bottom - top, right - left) == (73, 73)  # 2.6 x the 28 px eye distance
  masked = baselines.apply("mask", images, points)
  assert masked[:, top:bottom, left:right].max() == 0.0
  np.testing.assert_array_equal(masked[:, :top], images[:, :top])
  edges = baselines.apply("edge", images, points)
  assert set(np.unique(edges[:, top:bottom, left:right])) <= {0.0, 1.0}
  blurred = baselines.apply("blur", np.tile(images[:1], (1, 1, 1, 1)), points[:1])
  assert blurred.std() < 0.1 * images.std()  # 8x8 detail left of uniform noise
  noisy = baselines.apply("noise", images, points, seed=3)
  np.testing.assert_array_equal(noisy, baselines.apply("noise", images, points, seed=3))
  superpixels = baselines.apply("superpixel", images[:1], points[:1])
  assert len(np.unique(superpixels.reshape(-1, 3), axis=0)) <= 2 * baselines.SUPERPIXEL_SEGMENTS
  with pytest.raises(ValueError, match="unknown baseline 'pixelate'"):
    baselines.apply("pixelate", images, points)


def test_baselines_remove_identity_in_the_expected_order():
  """On 100 real fold-1 pairs with FaceNet: every baseline falls near chance
  while the originals verify; superpixels (which keep the face's layout and
  colours) leak the most identity, as in the paper's Fig. 4. (Measured:
  originals 0.98 accurate, baselines 0.44-0.58; superpixel AUC 0.65, the
  next 0.55.)"""
  report, _ = evaluate.evaluate(
    checkpoint="",
    data=str(LFW),
    pairs_file="",
    landmark_file=LANDMARKS,
    recognizer_names=["facenet"],
    baseline_names=list(baselines.NAMES),
    folds=[1],
    max_pairs=100,
    detector="none",
  )
  table = report["verification"]["facenet"]
  assert table["original"]["accuracy"] >= 0.95
  for name in baselines.NAMES:
    assert table[f"{name}:A"]["accuracy"] < 0.75, name
  assert table["superpixel:A"]["auc"] == max(table[f"{n}:A"]["auc"] for n in baselines.NAMES)


def test_detector_consistency_of_a_known_shift():
  """MTCNN on real faces shifted by 6 px to the right: boxes and keypoints
  move by 6 px in x and 0 in y, a mean absolute difference of ~3 px."""
  mtcnn = pytest.importorskip("mtcnn")
  pairs, landmarks, _ = lfw_pairs.select(
    pairs_file.read_pairs(str(LFW / "pairs.txt")), str(LFW / "lfw"), LANDMARKS, [1], limit=4
  )
  faces = lfw_pairs.load_faces(pairs, str(LFW / "lfw"), landmarks, 128)
  images = faces.images[:3]
  shifted = np.concatenate([np.repeat(images[:, :, :1], 6, axis=2), images[:, :, :-6]], axis=2)
  detector = mtcnn.MTCNN()
  found = evaluate.detect(detector, images, faces.landmarks[:3])
  moved = evaluate.detect(detector, shifted, faces.landmarks[:3] + [6, 0])
  same = evaluate.detector_consistency(found, found)
  assert same["keypoints_px"] == 0.0 and same["detected"] == 1.0
  result = evaluate.detector_consistency(found, moved)
  assert result["compared"] == 3
  assert 2.0 < result["keypoints_px"] < 4.0
  assert 1.5 < result["box_px"] < 4.5


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
  """A tiny fit_jax checkpoint and a tiny blur deanonymizer (64 px)."""
  root = tmp_path_factory.mktemp("eval")
  config = tiny.get_config()
  config.train.num_steps = 2
  train.train_and_evaluate(config, str(root / "fit"))
  d_config = deanonymize_config.get_config("blur")
  d_config.data.root = str(LFW / "lfw")
  d_config.data.landmarks = LANDMARKS
  d_config.data.exclude_pairs = str(LFW / "pairs.txt")
  d_config.data.image_size = 64
  d_config.model.generator.ngf = 8
  d_config.model.generator.num_blocks = 1
  d_config.model.discriminator.ndf = 8
  d_config.train.batch_size = 4
  d_config.train.num_steps = 2
  d_config.train.log_every = 1
  deanonymize.train(d_config, str(root / "deanonymizers" / "blur"))
  return root


def test_deanonymizer_trains_on_people_outside_the_pairs(tiny_runs):
  log = (tiny_runs / "deanonymizers" / "blur" / "metrics.jsonl").read_text().splitlines()
  assert [json.loads(line)["step"] for line in log] == [1, 2]
  assert all(np.isfinite(v) for v in json.loads(log[-1]).values())
  config = deanonymize_config.get_config("blur")
  config.data.root = str(LFW / "lfw")
  config.data.landmarks = LANDMARKS
  config.data.exclude_pairs = str(LFW / "pairs.txt")
  from fit_jax.data import input_pipeline

  source = input_pipeline.build_source(config)
  in_pairs = {
    p.split("/")[0]
    for pair in pairs_file.read_pairs(str(LFW / "pairs.txt"))
    for p in (pair.first, pair.second)
  }
  people = {r.relpath.split("/")[0] for r in source.records}
  assert people and not people & in_pairs


def test_report_of_a_tiny_checkpoint(tiny_runs, tmp_path):
  out = tmp_path / "report"
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "fit_jax.evaluate",
      "--checkpoint",
      str(tiny_runs / "fit"),
      "--data",
      str(LFW),
      "--landmarks",
      LANDMARKS,
      "--out",
      str(out),
      "--recognizers",
      "facenet,sphereface",
      "--baselines",
      "blur",
      "--deanonymizers",
      str(tiny_runs / "deanonymizers"),
      "--max_pairs",
      "12",
      "--image_size",
      "64",
    ],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=900,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads((out / "report.json").read_text())
  assert report["setup"]["pairs"] == 12
  for name in ("facenet", "sphereface"):
    table = report["verification"][name]
    for variant in ("original", "fit_jax:A", "fit_jax:W", "fit_jax:R", "blur:A", "blur:R"):
      assert 0.0 <= table[variant]["accuracy"] <= 1.0 and 0.0 <= table[variant]["auc"] <= 1.0
    assert set(report["multimodality"][name]) == {"A_vs_A2", "W_vs_W2", "x_vs_R"}
  for variant in ("fit_jax:R", "fit_jax:W", "blur:R"):
    quality = report["recovery"][variant]
    assert quality["lpips"] > 0 and 0 < quality["dssim"] < 1 and quality["l2"] <= quality["l1"]
  assert set(report["detector"]) == {"original", "fit_jax:A", "fit_jax:R"}
  markdown = (out / "report.md").read_text()
  assert "| fit_jax:R |" in markdown and "Multimodality" in markdown
  for plot in ("identity_vs_recovery.png", "roc_facenet.png", "roc_sphereface.png"):
    assert (out / plot).stat().st_size > 1000
  # An existing report directory is never overwritten.
  again = subprocess.run(
    [sys.executable, "-m", "fit_jax.evaluate", "--data", str(LFW), "--out", str(out)],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert again.returncode != 0 and "exists" in again.stderr
