"""train_and_evaluate: checkpoints, logs, sample grids and resume (tiny)."""

import json
import os

import jax
import numpy as np
import pytest
from PIL import Image

from configs import tiny
from fit_jax.data import input_pipeline
from fit_jax.models import generator_layout
from fit_jax.training import batches, run_records, train


def test_train_writes_outputs_and_resumes(tmp_path):
  config = tiny.get_config()
  config.train.num_steps = 2
  state = train.train_and_evaluate(config, str(tmp_path))
  assert int(state.step) == 2
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2"]
  grid = np.asarray(Image.open(tmp_path / "samples" / "step_0000002.png"))
  assert grid.shape == (12 + 2 * 64, 5 * 64, 3) and grid.std() > 0  # labels over the rows
  assert any(name.startswith("events.out.tfevents") for name in os.listdir(tmp_path))
  config.train.num_steps = 3
  resumed = train.train_and_evaluate(config, str(tmp_path))
  assert int(resumed.step) == 3
  assert "3" in os.listdir(tmp_path / "checkpoints")
  # A workdir written for another state: one clear error naming the checkpoint.
  checkpoint = str(tmp_path / "checkpoints" / "3")
  other_norm = tiny.get_config()
  other_norm.model.norm = "instance"  # no running statistics in the state
  with pytest.raises(
    ValueError, match=f"{checkpoint}: the checkpoint has no place here for .*batch_stats"
  ):
    train.train_and_evaluate(other_norm, str(tmp_path))
  wider = tiny.get_config()
  wider.model.generator.ngf *= 2
  with pytest.raises(ValueError, match=f"{checkpoint}: gen.params.generator.*has shape"):
    train.train_and_evaluate(wider, str(tmp_path))
  # One record per start that got as far as training, the refused ones not.
  runs = [json.loads(line) for line in (tmp_path / "runs.jsonl").read_text().splitlines()]
  assert [(r["start_step"], r["num_steps"]) for r in runs] == [(0, 2), (2, 3)]
  # The config says "auto"; the record names the layout that ran.
  assert runs[0]["config"]["model"]["generator"]["upsample"] == "auto"
  assert runs[0]["generator_layout"] == generator_layout.resolve({}, "cpu")
  assert runs[1]["backend"] == "cpu" and runs[1]["num_devices"] == jax.device_count()


def test_non_finite_values_name_steps_group_and_term():
  with pytest.raises(
    FloatingPointError,
    match=r"in step 7, generator group .*: g/fr_anon \(checkpoints up to step 6 ",
  ):
    run_records.check_finite({"g/fr_anon": float("nan"), "g/loss": 1.0}, 7, 7)
  # Norms are watched like losses; the window's step range and both groups
  # are named.
  with pytest.raises(
    FloatingPointError,
    match=(
      r"in steps 11-20, discriminator group \(D and the recognizer\) and generator group "
      r"\(G and the password head\): d/param_norm, g/grad_norm"
    ),
  ):
    run_records.check_finite(
      {"g/grad_norm": float("inf"), "d/param_norm": float("nan"), "d/loss": 0.5}, 11, 20
    )
  run_records.check_finite({"g/loss": 1.0, "d/grad_norm": 3.0}, 1, 5)


def test_synthetic_faces_are_deterministic_and_valid():
  data = input_pipeline.SyntheticFaces(10, 64, seed=0)
  a, b = data.batch(5, 4), data.batch(5, 4)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])
  assert not np.array_equal(data.batch(6, 4)["image"], a["image"])
  assert a["image"].dtype == np.float32 and a["image"].shape == (4, 64, 64, 3)
  assert -1.0 <= a["image"].min() and a["image"].max() <= 1.0
  assert a["landmarks"].shape == (4, 5, 2)
  # Eyes above the nose above the mouth, left eye left of the right eye.
  lm = a["landmarks"]
  assert (lm[:, 0, 0] < lm[:, 1, 0]).all()
  assert (lm[:, 2, 1] > lm[:, :2, 1].max(axis=1)).all()
  assert (lm[:, 3:, 1].min(axis=1) > lm[:, 2, 1]).all()
  batches.check_batch(a, tiny.get_config(), num_devices=4)


def test_skipped_records_are_named_in_the_workdir(tmp_path):
  run_records.write_skipped(
    str(tmp_path),
    {"b/2.jpg": "b/2.jpg: file not found", "a/1.jpg": "a/1.jpg: unreadable image (OSError)"},
  )
  assert (tmp_path / "skipped_records.txt").read_text().splitlines() == [
    "a/1.jpg\ta/1.jpg: unreadable image (OSError)",
    "b/2.jpg\tb/2.jpg: file not found",
  ]


def test_sample_grid_labels_its_columns():
  rng = np.random.default_rng(0)
  images = {
    k: rng.uniform(-1, 1, (3, 64, 64, 3)).astype(np.float32)
    for k in ("anon", "anon2", "wrong", "recon")
  }
  original = rng.uniform(-1, 1, (3, 64, 64, 3)).astype(np.float32)
  grid = run_records.sample_grid(images, original)
  assert grid.shape == (12 + 3 * 64, 5 * 64, 3) and grid.dtype == np.uint8
  # Rows below the strip are the images, column by column.
  np.testing.assert_array_equal(
    grid[12 : 12 + 64, 64:128],
    np.clip((images["anon"][0] + 1) * 127.5 + 0.5, 0, 255).astype(np.uint8),
  )
  # Each column's label is drawn in its own 64 px of the white strip.
  strip = grid[:12].min(axis=(0, 2))
  for column in range(5):
    assert strip[column * 64 : (column + 1) * 64].min() < 128, run_records.GRID_COLUMNS[column]
