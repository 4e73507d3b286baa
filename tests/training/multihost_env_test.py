"""fit_jax.training.multihost: the multi-host environment becomes jax.distributed's arguments."""

import pytest

from fit_jax.training import multihost


def test_distributed_arguments_come_from_all_three_variables():
  env = {"JAX_COORDINATOR_ADDRESS": "host0:1234", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"}
  assert multihost.distributed_arguments(env) == {
    "coordinator_address": "host0:1234",
    "num_processes": 2,
    "process_id": 1,
  }
  # None set: JAX's own cluster discovery (Cloud TPU, SLURM) decides.
  assert multihost.distributed_arguments({}) == {}


@pytest.mark.parametrize(
  "env, message",
  [
    ({"JAX_COORDINATOR_ADDRESS": "host0:1234"}, "also needs JAX_NUM_PROCESSES, JAX_PROCESS_ID"),
    (
      {"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "two", "JAX_PROCESS_ID": "0"},
      "must be integers",
    ),
    (
      {"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "2"},
      r"JAX_PROCESS_ID=2 is outside \[0, JAX_NUM_PROCESSES=2\)",
    ),
  ],
)
def test_incomplete_or_bad_environment_is_one_line(env, message):
  with pytest.raises(ValueError, match=message):
    multihost.distributed_arguments(env)
