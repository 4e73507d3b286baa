"""SIGKILL at any moment, restart: bit-identical metrics and weights (CPU).

The runs share a persistent compilation cache (config.train.compilation_cache),
so the restarted run also proves that cached executables train identically.
"""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
STEPS = 6


def _command(workdir):
  cache = workdir.parent / "xla_cache"
  return [sys.executable, "-m", "fit_jax.main", "--config=configs/tiny.py",
          f"--workdir={workdir}", f"--config.train.num_steps={STEPS}",
          f"--config.train.compilation_cache={cache}",
          "--config.train.checkpoint_every=1", "--config.train.log_every=1",
          "--config.train.eval_every=100"]


def _env():
  env = dict(os.environ)
  env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
  env["JAX_PLATFORMS"] = "cpu"
  env.pop("JAX_COMPILATION_CACHE_DIR", None)  # the config's cache, not the suite's
  return env


def _metrics(workdir):
  """The last record of each step (a resumed run re-logs replayed steps)."""
  by_step = {}
  for line in (workdir / "metrics.jsonl").read_text().splitlines():
    record = json.loads(line)
    by_step[record.pop("step")] = record
  return by_step


def _final_params(workdir):
  import orbax.checkpoint as ocp  # noqa: PLC0415

  with ocp.StandardCheckpointer() as ckpt:
    state = ckpt.restore(workdir / "checkpoints" / str(STEPS) / "default")
  return state["gen"]["params"], state["disc"]["params"]


def test_sigkill_and_restart_is_bit_identical(tmp_path):
  straight = tmp_path / "straight"
  done = subprocess.run(_command(straight), cwd=ROOT, env=_env(), capture_output=True,
                        text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-2000:]
  cached = os.listdir(tmp_path / "xla_cache")
  for step in ("jit_generator_step", "jit_discriminator_step"):
    assert any(name.startswith(step) for name in cached), cached

  killed = tmp_path / "killed"
  process = subprocess.Popen(_command(killed), cwd=ROOT, env=_env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  metrics_file = killed / "metrics.jsonl"
  deadline = time.time() + 500
  # Kill in the middle of training: once 3 steps have been logged.
  while time.time() < deadline and process.poll() is None:
    if metrics_file.exists() and len(metrics_file.read_text().splitlines()) >= 3:
      break
    time.sleep(0.05)
  assert process.poll() is None, "the run ended before it could be killed"
  os.kill(process.pid, signal.SIGKILL)
  process.wait()
  logged_before_kill = len(metrics_file.read_text().splitlines())
  assert logged_before_kill < STEPS
  done = subprocess.run(_command(killed), cwd=ROOT, env=_env(), capture_output=True,
                        text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-2000:]

  want, got = _metrics(straight), _metrics(killed)
  assert sorted(want) == sorted(got) == list(range(1, STEPS + 1))
  assert want == got  # exact float equality, every metric of every step
  for a, b in zip(_final_params(straight), _final_params(killed)):
    for x, y in zip(_leaves(a), _leaves(b)):
      np.testing.assert_array_equal(x, y)


def _leaves(tree):
  if isinstance(tree, dict):
    for k in sorted(tree):
      yield from _leaves(tree[k])
  else:
    yield np.asarray(tree)
