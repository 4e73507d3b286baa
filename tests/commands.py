"""Runs a fit_jax command as a user would, in a fresh process on CPU."""

import os
import pathlib
import subprocess
import sys

from fit_jax.runtime import run_once_compile

ROOT = pathlib.Path(__file__).resolve().parents[1]
# XLA_FLAGS for a process whose programs need not run fast: the options of
# a run-once program (XLA:CPU code generation without its optimisations).
RUN_ONCE_XLA_FLAGS = " ".join(f"--{k}={v}" for k, v in run_once_compile.CPU_OPTIONS.items())


def run(command: str, *args: str, env: dict | None = None, timeout: int = 600):
  """`python -m fit_jax.<command> *args` from the repository root, its
  output captured; XLA_FLAGS emptied (the command sets its own)."""
  full_env = dict(os.environ, JAX_PLATFORMS="cpu", **(env or {}))
  full_env["XLA_FLAGS"] = ""
  return subprocess.run(
    [sys.executable, "-m", f"fit_jax.{command}", *args],
    cwd=ROOT,
    env=full_env,
    capture_output=True,
    text=True,
    timeout=timeout,
  )
