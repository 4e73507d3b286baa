"""Joining a multi-host run: jax.distributed from the environment.

On Cloud TPU and SLURM, JAX discovers the coordinator, the process count and
this process's index itself. Elsewhere (multi-GPU hosts, Kubernetes) the
three come from JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and
JAX_PROCESS_ID; JAX itself reads only the first, so they are passed on.
"""

import os

import jax
import numpy as np

ENVIRONMENT = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


def distributed_arguments(environ=os.environ) -> dict:
  """jax.distributed.initialize's arguments from the environment ({} when
  none of the three is set: JAX's cluster discovery fills them in).

  Raises:
    ValueError: one line naming what is missing or wrong.
  """
  given = [name for name in ENVIRONMENT if environ.get(name)]
  if not given:
    return {}
  if len(given) != len(ENVIRONMENT):
    missing = sorted(set(ENVIRONMENT) - set(given))
    raise ValueError(f"{', '.join(given)} is set; a multi-host run also needs {', '.join(missing)}")
  try:
    count, index = int(environ["JAX_NUM_PROCESSES"]), int(environ["JAX_PROCESS_ID"])
  except ValueError:
    raise ValueError("JAX_NUM_PROCESSES and JAX_PROCESS_ID must be integers") from None
  if not 0 <= index < count:
    raise ValueError(f"JAX_PROCESS_ID={index} is outside [0, JAX_NUM_PROCESSES={count})")
  return {
    "coordinator_address": environ["JAX_COORDINATOR_ADDRESS"],
    "num_processes": count,
    "process_id": index,
  }


def initialize(environ=os.environ) -> None:
  """Joins the run (call before any JAX computation)."""
  arguments = distributed_arguments(environ)
  # CPU devices need a collectives implementation across processes (GPUs and
  # TPUs have their own); it must be chosen before the backend starts.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(**arguments)


def agree(flag: bool) -> bool:
  """Process 0's flag on every process (a decision all must take together)."""
  if jax.process_count() == 1:
    return flag
  from jax.experimental import multihost_utils  # noqa: PLC0415

  return bool(multihost_utils.broadcast_one_to_all(np.int32(flag)))


def gather(tree):
  """Host numpy copies of (possibly multi-process) sharded arrays."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  from jax.experimental import multihost_utils  # noqa: PLC0415

  return multihost_utils.process_allgather(tree, tiled=True)
