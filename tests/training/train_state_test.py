"""A fresh training state, with pretrained or converted variables merged in,
and the abstract state a resumed run restores into."""

import jax
import numpy as np
import pytest

from configs import tiny
from fit_jax import models as models_lib
from fit_jax.training import checkpoints, train_state

from .. import compiles as compiles_lib


@pytest.fixture(scope="module")
def setting():
  config = tiny.get_config()
  models = models_lib.build_models(config.model)
  return config, models, train_state.make_mesh(jax.devices()[:1])


def _create(setting, overrides=None):
  config, models, mesh = setting
  return train_state.create_train_state(config, models, jax.random.PRNGKey(0), mesh, overrides)


def test_a_partial_override_replaces_its_entries_and_keeps_the_fresh_rest(setting):
  fresh = _create(setting)
  sphere = jax.device_get(fresh.disc.params["sphereface"])
  backbone = {k: v for k, v in sphere.items() if k != "fc6"}
  pretrained = jax.tree.map(lambda x: np.full_like(x, 0.5), backbone)
  state = _create(setting, {"sphereface": {"params": pretrained}})
  merged = jax.device_get(state.disc.params["sphereface"])
  for name in backbone:
    for leaf in jax.tree.leaves(merged[name]):
      np.testing.assert_array_equal(leaf, 0.5)
  # The head it does not name, and every other module, are the fresh draws.
  np.testing.assert_allclose(merged["fc6"]["weight"], sphere["fc6"]["weight"], atol=1e-6)
  for a, b in zip(jax.tree.leaves(fresh.gen.params), jax.tree.leaves(state.gen.params)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-6)
  # The optimizer starts from the merged weights' zero moments.
  assert all(float(np.abs(m).max()) == 0 for m in jax.tree.leaves(state.disc.opt_state))


def test_overrides_that_do_not_fit_the_model_get_one_clear_error(setting):
  with pytest.raises(ValueError, match="'sphereface' have entries \\['fc9'\\] the model lacks"):
    _create(setting, {"sphereface": {"params": {"fc9": {"weight": np.zeros((2, 2))}}}})
  head = train_state.abstract_train_state(*setting).disc.params["sphereface"]["fc6"]["weight"]
  wrong = np.zeros((head.shape[0], head.shape[1] + 1), np.float32)
  with pytest.raises(ValueError, match="'sphereface' do not match the config's model"):
    _create(setting, {"sphereface": {"params": {"fc6": {"weight": wrong}}}})


def test_a_resume_restores_into_the_abstract_state_which_computes_nothing(setting, tmp_path):
  config, models, mesh = setting
  fresh = _create(setting)
  with compiles_lib.counted() as compiles:
    abstract = train_state.abstract_train_state(config, models, mesh)
  assert compiles == []
  paths = [path for path, _ in jax.tree_util.tree_leaves_with_path(fresh)]
  assert [path for path, _ in jax.tree_util.tree_leaves_with_path(abstract)] == paths
  for a, b in zip(jax.tree.leaves(abstract), jax.tree.leaves(fresh)):
    assert (a.shape, a.dtype, a.sharding) == (b.shape, b.dtype, b.sharding)
  manager = checkpoints.manager(str(tmp_path), keep=1)
  checkpoints.save(manager, 0, fresh, force=True)
  manager.wait_until_finished()
  restored = checkpoints.restore(manager, abstract, str(tmp_path))
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(fresh)):
    assert a.sharding == b.sharding
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
