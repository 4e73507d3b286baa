"""Counts the XLA compilations a block of code starts."""

import contextlib

import jax

COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


@contextlib.contextmanager
def counted():
  """Yields a list that receives each compilation's duration (seconds)."""
  compiles = []

  def listen(name, seconds, **kwargs):
    if name == COMPILE_EVENT:
      compiles.append(seconds)

  jax.monitoring.register_event_duration_secs_listener(listen)
  try:
    yield compiles
  finally:
    jax.monitoring.unregister_event_duration_listener(listen)
