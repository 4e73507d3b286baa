"""layers.bias_add and layers.Conv: float32 bias gradients under bfloat16
compute, with nn.Conv's parameters."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from fit_jax.models import layers


def test_bias_gradient_is_summed_in_float32():
  # 65,536 unit cotangents per channel: exact in float32. Summed in bfloat16
  # (8-bit mantissa) the partial sums stop growing: XLA's CPU backend gives
  # 512 for the plain broadcast add's gradient.
  x = jnp.zeros((64, 32, 32, 3), jnp.bfloat16)
  bias = jnp.zeros((3,), jnp.float32)
  grad = jax.grad(lambda b: jnp.sum(layers.bias_add(x, b).astype(jnp.float32)))(bias)
  assert grad.dtype == jnp.float32
  np.testing.assert_array_equal(grad, np.full(3, 65536.0))
  out = layers.bias_add(x, jnp.arange(3.0))
  assert out.dtype == jnp.bfloat16
  np.testing.assert_array_equal(out[0, 0, 0], [0, 1, 2])
  # The input's gradient passes through unchanged, in its dtype.
  gx = jax.grad(lambda x: jnp.sum(layers.bias_add(x, bias).astype(jnp.float32) * 3))(x)
  assert gx.dtype == jnp.bfloat16 and bool(jnp.all(gx == 3))


def test_conv_has_nn_conv_parameters_and_values():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 9, 9, 3))

  def bias_init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype)

  ours = layers.Conv(5, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)), add_bias=True,
                     bias_init=bias_init)
  theirs = nn.Conv(5, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)), bias_init=bias_init)
  v = ours.init(jax.random.PRNGKey(1), x)
  v_ref = theirs.init(jax.random.PRNGKey(1), x)
  assert jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), v, v_ref) == {
    "params": {"kernel": True, "bias": True}}
  np.testing.assert_allclose(ours.apply(v, x), theirs.apply(v, x), rtol=1e-6)
  no_bias = layers.Conv(5, (3, 3)).init(jax.random.PRNGKey(1), x)
  assert list(no_bias["params"]) == ["kernel"]
  with pytest.raises(ValueError, match="layers.Conv takes add_bias, not use_bias"):
    layers.Conv(5, (3, 3), use_bias=True).init(jax.random.PRNGKey(1), x)
