"""Interrupted runs restart to bit-identical metrics and weights (CPU).

SIGKILL at any moment, SIGTERM (preemption) at a random step, and SIGKILL
inside a checkpoint save. The runs share a persistent compilation cache
(config.train.compilation_cache), so the restarted runs also prove that
cached executables train identically.
"""

import json
import os
import pathlib
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
STEPS = 6


def _command(workdir, cache):
  return [
    sys.executable,
    "-m",
    "fit_jax.main",
    "--config=configs/tiny.py",
    f"--workdir={workdir}",
    f"--config.train.num_steps={STEPS}",
    f"--config.train.compilation_cache={cache}",
    "--config.train.checkpoint_every=1",
    "--config.train.log_every=1",
    "--config.train.eval_every=100",
  ]


def _env():
  env = dict(os.environ)
  env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
  env["JAX_PLATFORMS"] = "cpu"
  env.pop("JAX_COMPILATION_CACHE_DIR", None)  # the config's cache, not the suite's
  return env


def metrics_by_step(workdir) -> dict[int, dict]:
  """Each step's record; a resumed run keeps one line per step."""
  by_step = {}
  for line in (workdir / "metrics.jsonl").read_text().splitlines():
    record = json.loads(line)
    step = record.pop("step")
    assert step not in by_step, f"step {step} logged twice"
    by_step[step] = record
  return by_step


def _final_params(workdir):
  import orbax.checkpoint as ocp  # noqa: PLC0415

  with ocp.StandardCheckpointer() as ckpt:
    state = ckpt.restore(workdir / "checkpoints" / str(STEPS) / "default")
  return state["gen"]["params"], state["disc"]["params"]


def _cache(straight):
  """The compilation cache of the uninterrupted run, which every later run reads."""
  return straight.parent / "xla_cache"


def _run_to_the_end(workdir, cache):
  """A run (or a restart) of the whole schedule, which must succeed."""
  done = subprocess.run(
    _command(workdir, cache), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600
  )
  assert done.returncode == 0, done.stderr[-2000:]
  return done


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
  """An uninterrupted run, the reference of every interrupted one."""
  workdir = tmp_path_factory.mktemp("resume") / "straight"
  _run_to_the_end(workdir, _cache(workdir))
  cached = os.listdir(_cache(workdir))
  for step in ("jit_generator_step", "jit_discriminator_step"):
    assert any(name.startswith(step) for name in cached), cached
  return workdir


def _start_and_signal(workdir, cache, sig, after_steps: int):
  """Starts a run and sends `sig` once `after_steps` steps are logged."""
  process = subprocess.Popen(
    _command(workdir, cache),
    cwd=ROOT,
    env=_env(),
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )
  metrics_file = workdir / "metrics.jsonl"
  deadline = time.time() + 500
  try:
    while time.time() < deadline and process.poll() is None:
      if metrics_file.exists() and len(metrics_file.read_text().splitlines()) >= after_steps:
        break
      time.sleep(0.05)
    assert process.poll() is None, "the run ended before it could be signalled"
    os.kill(process.pid, sig)
    out, err = process.communicate(timeout=300)
  finally:
    if process.poll() is None:
      process.kill()
  return process.returncode, out, err


def _restart_and_compare(workdir, straight):
  done = _run_to_the_end(workdir, _cache(straight))
  assert "resuming from step" in done.stderr
  want, got = metrics_by_step(straight), metrics_by_step(workdir)
  assert sorted(want) == sorted(got) == list(range(1, STEPS + 1))
  assert want == got  # exact float equality, every metric of every step
  for a, b in zip(_final_params(straight), _final_params(workdir)):
    for x, y in zip(_leaves(a), _leaves(b)):
      np.testing.assert_array_equal(x, y)
  return done


def test_sigkill_and_restart_is_bit_identical(tmp_path, straight):
  killed = tmp_path / "killed"
  # Kill in the middle of training: once 3 steps have been logged.
  returncode, _, _ = _start_and_signal(killed, _cache(straight), signal.SIGKILL, 3)
  assert returncode == -signal.SIGKILL
  assert len((killed / "metrics.jsonl").read_text().splitlines()) < STEPS
  _restart_and_compare(killed, straight)


def test_sigterm_saves_the_step_in_flight_and_exits_zero(tmp_path, straight):
  preempted = tmp_path / "preempted"
  after = random.Random().randint(1, STEPS - 2)
  returncode, out, err = _start_and_signal(preempted, _cache(straight), signal.SIGTERM, after)
  assert returncode == 0, f"SIGTERM after {after} logged steps: {err[-2000:]}"
  [line] = [line for line in out.splitlines() if line.startswith("preempted")]
  step = int(line.split("checkpoint of step ")[1].split()[0])
  assert after <= step < STEPS, line
  # That step's checkpoint is complete (checkpoints are every step here,
  # so the preemption's own save is the newest one).
  assert max(int(d) for d in os.listdir(preempted / "checkpoints") if d.isdigit()) == step
  _restart_and_compare(preempted, straight)


# Runs the trainer with orbax's commit (the atomic rename of the finished
# temporary directory) replaced by a SIGKILL of the process at step KILL_AT:
# the worst moment, all data written and nothing committed, as orbax's own
# tests simulate a save that never finalizes.
_KILL_INSIDE_SAVE = """
import asyncio, os, signal, sys
from orbax.checkpoint._src.path import atomicity
from fit_jax import main

commit = atomicity.AtomicRenameTemporaryPath.finalize
async def finalize(self):
  if self._final_path.name == os.environ["KILL_AT"]:
    os.kill(os.getpid(), signal.SIGKILL)
  return await commit(self)
atomicity.AtomicRenameTemporaryPath.finalize = finalize
main.run()  # as `python -m fit_jax.main` (its XLA:CPU flags included)
"""


def test_sigkill_inside_a_save_leaves_no_step_to_restore(tmp_path, straight):
  crashed = tmp_path / "crashed"
  command = [sys.executable, "-c", _KILL_INSIDE_SAVE] + _command(crashed, _cache(straight))[3:]
  done = subprocess.run(
    command, cwd=ROOT, env={**_env(), "KILL_AT": "4"}, capture_output=True, text=True, timeout=600
  )
  assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
  left = os.listdir(crashed / "checkpoints")
  assert "3" in left and "4" not in left
  assert any(name.startswith("4.orbax-checkpoint-tmp") for name in left), left
  restarted = _restart_and_compare(crashed, straight)
  assert "resuming from step 3" in restarted.stderr


def _leaves(tree):
  if isinstance(tree, dict):
    for k in sorted(tree):
      yield from _leaves(tree[k])
  else:
    yield np.asarray(tree)
