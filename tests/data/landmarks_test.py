"""Landmark tool: real MTCNN on real faces; failures listed, never dropped."""

import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from fit_jax.data import input_pipeline, landmarks

from ..conftest import DATA

pytest.importorskip("mtcnn")
LFW = DATA / "lfw_subset" / "lfw"
ROOT = pathlib.Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.real_faces


def test_cli_on_real_faces_lists_failures(tmp_path):
  images = tmp_path / "images"
  people = sorted(os.listdir(LFW))[:2]
  for person in people:
    (images / person).mkdir(parents=True)
    name = sorted(os.listdir(LFW / person))[0]
    shutil.copy(LFW / person / name, images / person / name)
  (images / "Nobody").mkdir()
  Image.fromarray(np.full((250, 250, 3), 128, np.uint8)).save(images / "Nobody" / "blank.jpg")
  (images / "Nobody" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
  out = tmp_path / "lm.txt"
  done = subprocess.run(
    [sys.executable, "-m", "fit_jax.landmarks", f"--images={images}", f"--out={out}"],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert done.returncode == 0, done.stderr[-2000:]
  assert "wrote 2 landmark lines" in done.stdout and "2 images without landmarks" in done.stdout
  assert "skipped Nobody/blank.jpg: no face found" in done.stdout
  assert "skipped Nobody/broken.jpg: unreadable" in done.stdout
  records, problems = input_pipeline.parse_landmark_file(str(out), with_labels=False)
  assert not problems and [r.relpath.split("/")[0] for r in records] == people
  for r in records:  # a centred LFW face: eyes left/right, nose below, mouth lower
    lm = r.landmarks
    assert lm[0, 0] < lm[1, 0] and lm[2, 1] > lm[0, 1] and lm[3, 1] > lm[2, 1]
    assert np.all((lm > 50) & (lm < 200))
  assert len((tmp_path / "lm.txt.failures.txt").read_text().splitlines()) == 2


def test_choose_face_prefers_the_centred_confident_one():
  faces = [
    {"box": [0, 0, 50, 50], "confidence": 0.99, "keypoints": {}},
    {"box": [100, 100, 50, 50], "confidence": 0.95, "keypoints": {}},
    {"box": [110, 110, 30, 30], "confidence": 0.5, "keypoints": {}},
  ]
  assert landmarks.choose_face(faces, 250, 250) is faces[1]
  assert landmarks.choose_face(faces[2:], 250, 250) is faces[2]
  assert landmarks.choose_face([], 250, 250) is None


def test_with_labels_format():
  line = landmarks.format_line("a/b.jpg", np.arange(10.0).reshape(5, 2), 3)
  assert line == "a/b.jpg 3 0 1 2 3 4 5 6 7 8 9"
