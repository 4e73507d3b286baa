"""Every training config builds its models, state and both update steps.

Traced abstractly (jax.eval_shape: no model program is compiled or run), so a
config whose fields do not fit together fails here, in seconds, and not
at the start of a run: the README's demo, the paper's default and the
LFW training (FaceNet as the recognizer). The suite itself trains the tiny
config (the notebooks' tests too) and, in the GPU script's dry run, the
packed LFW config at tiny size.
"""

import importlib

import jax
import pytest

from fit_jax import models as models_lib
from fit_jax.training import batches, train, train_state


@pytest.mark.parametrize("name", ["demo", "default", "lfw"])
def test_config_traces_both_training_steps(name):
  config = importlib.import_module(f"configs.{name}").get_config()
  models = models_lib.build_models(config.model)
  mesh = train_state.make_mesh()
  state = train_state.abstract_train_state(config, models, mesh)
  steps = train.TrainSteps(models, config, mesh, state)
  key = jax.random.PRNGKey(0)
  batch = batches.random_batch(config, config.train.batch_size)
  _, generated, g_metrics = jax.eval_shape(steps.generator, state, batch, key)
  _, d_metrics = jax.eval_shape(steps.discriminator, state, batch, generated, key)
  size = config.data.image_size
  assert generated["anon"].shape == (config.train.batch_size, size, size, 3)
  assert all(m.shape == () for m in {**g_metrics, **d_metrics}.values())
