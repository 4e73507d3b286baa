"""A preemption notice (SIGTERM) stops training at a step all processes agree on.

Cloud TPU and Kubernetes preempt with SIGTERM and a grace period. The
training loop asks `reached(step)` after each step; once it says yes, the
loop ends that step as a final one (logged and checkpointed), waits for
orbax to commit the checkpoint, and returns. A restart resumes from it.

- Several processes (`jax.distributed`): JAX's preemption service turns a
  SIGTERM on any host into one sync step that every process reaches
  together, which orbax exposes as `CheckpointManager.reached_preemption`
  (the service installs its own SIGTERM handler). Stopping at different
  steps would leave the others waiting in a collective.
- One process: a Python SIGTERM handler sets a flag, read after each step.
  The handler is installed only while training runs, and only from the main
  thread (Python's rule); the previous handler comes back afterwards.
"""

import signal
import threading

import jax
from absl import logging


class Preemption:
  """Watches for a preemption notice during training (a context manager).

  Attributes:
    stopped_at: the step at which training stopped for a notice, else None.
  """

  def __init__(self):
    self.stopped_at: int | None = None
    self._requested = False
    self._previous = None

  def __enter__(self) -> "Preemption":
    if (
      not jax.distributed.is_initialized() and threading.current_thread() is threading.main_thread()
    ):
      self._previous = signal.signal(signal.SIGTERM, self._notice)
    return self

  def __exit__(self, *exc) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None

  def _notice(self, signum, frame) -> None:
    del signum, frame
    if not self._requested:
      logging.warning("SIGTERM: finishing the step in flight, then saving a checkpoint")
    self._requested = True

  def reached(self, step: int, manager) -> bool:
    """Whether training must stop after `step` (every process agrees)."""
    if jax.distributed.is_initialized():
      stop = manager.reached_preemption(step)
    else:
      stop = self._requested
    if stop:
      self.stopped_at = step
    return stop
