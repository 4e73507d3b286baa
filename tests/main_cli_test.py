"""python -m fit_jax.main: mistakes in the config or data are one line, not a traceback."""

import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _main(*args):
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  return subprocess.run(
    [sys.executable, "-m", "fit_jax.main", *args],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )


def test_a_mistyped_config_field_is_one_line(tmp_path):
  done = _main("--config=configs/tiny.py", f"--workdir={tmp_path}", "--config.train.num_stepz=3")
  assert done.returncode != 0
  assert "Traceback" not in done.stderr
  [line] = [x for x in done.stderr.splitlines() if "unknown config field" in x]
  assert '"num_steps"' in line and "--config.train.num_stepz" in line


def test_a_bad_training_record_is_one_line(tmp_path):
  (tmp_path / "faces").mkdir()
  (tmp_path / "landmarks.txt").write_text("person/a.jpg 1 2 3\n")
  done = _main(
    "--config=configs/tiny.py",
    f"--workdir={tmp_path / 'w'}",
    "--config.data.source=lfw_folder",
    f"--config.data.root={tmp_path / 'faces'}",
    f"--config.data.landmarks={tmp_path / 'landmarks.txt'}",
  )
  assert done.returncode != 0
  assert "Traceback" not in done.stderr
  assert done.stderr.strip().splitlines()[-1] == (
    f"fit_jax.main: {tmp_path / 'landmarks.txt'}:1: expected 11 fields (path + 10 "
    "coordinates), got 4"
  )
