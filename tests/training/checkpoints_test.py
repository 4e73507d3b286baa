"""Training checkpoints on a data-parallel mesh: written from one replica."""

import jax
import jax.numpy as jnp
import numpy as np

from fit_jax.training import checkpoints, train_state

from .. import compiles as compiles_lib


def test_a_replicated_state_saves_without_compiling_and_restores_exactly(tmp_path):
  mesh = train_state.make_mesh()
  assert mesh.devices.size == 8
  # Distinct shapes, as a model's parameters have; each divides by 8, so
  # orbax's replica-parallel default would slice it over the 8 replicas.
  shapes = [(8,), (16, 8), (3, 3, 8, 16), (7, 7, 19, 8), (40,)]
  host = {
    f"w{i}": np.random.default_rng(i).normal(size=s).astype(np.float32)
    for i, s in enumerate(shapes)
  }
  sharding = train_state.state_sharding(host, mesh)
  state = jax.device_put(host, sharding)
  jax.block_until_ready(state)
  with compiles_lib.counted() as compiles:
    manager = checkpoints.manager(str(tmp_path), keep=2)
    checkpoints.save(manager, 1, state)
    manager.wait_until_finished()
  assert compiles == []  # not one slice program per device and shape

  template = jax.tree.map(jnp.zeros_like, state)
  restored = checkpoints.restore(
    checkpoints.manager(str(tmp_path), keep=2), template, str(tmp_path)
  )
  for name, value in host.items():
    np.testing.assert_array_equal(np.asarray(restored[name]), value)
    assert restored[name].sharding.is_equivalent_to(sharding[name], value.ndim)
