"""BatchNorm folding for inference: exact and batch-independent."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fit_jax.deploy import inference
from fit_jax.models import generator as generator_lib
from fit_jax.models import resnet_block


def _trained_batch_model():
  model = generator_lib.Generator(ngf=8, num_blocks=2, norm="batch")
  key = jax.random.PRNGKey(0)
  x = jax.random.uniform(key, (6, 32, 32, 3), minval=-1, maxval=1)
  z = jax.random.bernoulli(key, 0.5, (6, 16)) - 0.5
  variables = model.init(key, x, z, train=True)
  for _ in range(3):  # non-trivial running statistics
    _, updates = model.apply(variables, x * 1.5, z, train=True, mutable=["batch_stats"])
    variables = {**variables, **updates}
  return model, variables, x, z


def test_folded_generator_equals_running_stats_inference():
  model, variables, x, z = _trained_batch_model()
  folded, folded_vars = inference.fold_batch_norm(model, variables)
  want = model.apply(variables, x, z, train=False)
  got = folded.apply(folded_vars, x, z, train=False)
  np.testing.assert_allclose(got, want, atol=1e-5)
  assert "batch_stats" not in folded_vars
  # Batch-independent: one image alone gives the same output.
  np.testing.assert_allclose(
    folded.apply(folded_vars, x[2:3], z[2:3], train=False)[0], got[2], atol=1e-5
  )


def test_folding_other_modes_is_a_clear_error():
  model = generator_lib.Generator(ngf=4, num_blocks=1, norm="batch_stats")
  with pytest.raises(ValueError, match="only norm='batch'"):
    inference.fold_batch_norm(model, {"params": {}})


def test_bfloat16_folded_close_to_float32():
  model, variables, x, z = _trained_batch_model()
  folded, folded_vars = inference.fold_batch_norm(model, variables)
  y32 = folded.apply(folded_vars, x, z, train=False)
  y16 = dataclasses.replace(folded, dtype=jnp.bfloat16).apply(folded_vars, x, z, train=False)
  assert float(jnp.abs(y16 - y32).max()) < 0.1 and float(jnp.abs(y16 - y32).mean()) < 0.02


@pytest.mark.parametrize(
  "shape,num_downsampling,upsample",
  [
    ((3, 32, 24, 3), 2, "resize_conv"),
    ((3, 32, 24, 3), 2, "phase_2x2"),
    # Odd maps after one down layer (5x7).
    ((2, 10, 14, 3), 1, "phase_2x2"),
    ((2, 12, 16, 3), 0, "phase_2x2"),
  ],
)
def test_border_trunk_padding_is_the_same_folded_generator(shape, num_downsampling, upsample):
  """folded_trunk_padding='border' (padded maps, zero-padded convolutions,
  the border rewritten: the down layers' outputs and the blocks', the last
  edge-padded for a phase up-layer) computes the per-convolution padding's
  outputs, in float32 and bfloat16, and stays batch-independent; training
  ignores it."""
  model = generator_lib.Generator(
    ngf=8, num_blocks=2, norm="batch", num_downsampling=num_downsampling, upsample=upsample
  )
  key = jax.random.PRNGKey(1)
  x = jax.random.uniform(key, shape, minval=-1, maxval=1)
  z = jax.random.bernoulli(key, 0.5, (shape[0], 16)) - 0.5
  variables = model.init(key, x, z, train=True)
  _, updates = model.apply(variables, x * 1.5, z, train=True, mutable=["batch_stats"])
  variables = {**variables, **updates}
  folded, folded_vars = inference.fold_batch_norm(model, variables)
  border = dataclasses.replace(folded, folded_trunk_padding="border")
  want = folded.apply(folded_vars, x, z, train=False)
  got = border.apply(folded_vars, x, z, train=False)
  np.testing.assert_allclose(got, want, atol=1e-5)
  np.testing.assert_allclose(
    border.apply(folded_vars, x[1:2], z[1:2], train=False)[0], got[1], atol=1e-5
  )
  bf16 = dataclasses.replace(folded, dtype=jnp.bfloat16)
  diff = dataclasses.replace(bf16, folded_trunk_padding="border").apply(
    folded_vars, x, z, train=False
  ) - bf16.apply(folded_vars, x, z, train=False)
  assert float(jnp.abs(diff).max()) < 0.05
  trained = dataclasses.replace(model, folded_trunk_padding="border")
  np.testing.assert_array_equal(
    trained.apply(variables, x, z, train=True, mutable=["batch_stats"])[0],
    model.apply(variables, x, z, train=True, mutable=["batch_stats"])[0],
  )


def test_unknown_trunk_padding_and_padded_blocks_without_folding_are_clear_errors():
  x, z = jnp.zeros((1, 16, 16, 3)), jnp.zeros((1, 16))
  with pytest.raises(ValueError, match="folded_trunk_padding 'padded' is not one of"):
    generator_lib.Generator(ngf=4, num_blocks=1, folded_trunk_padding="padded").init(
      jax.random.PRNGKey(0), x, z, train=True
    )
  block = resnet_block.ResnetBlock("batch", 0, padded=True)
  with pytest.raises(ValueError, match="needs folded norms; got 'batch'"):
    block.init(jax.random.PRNGKey(0), jnp.zeros((1, 6, 6, 4)), train=False)
