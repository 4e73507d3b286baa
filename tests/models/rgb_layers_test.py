"""The RGB-side convolutions as convolutions of pixel blocks equal lax.conv
of the reflect-padded input, in value and gradient, without scatters."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fit_jax.models import padding, rgb_layers


def _reference(x, kernel, pad):
  return jax.lax.conv_general_dilated(
    padding.reflect_pad_reference(x, pad),
    kernel,
    (1, 1),
    "VALID",
    dimension_numbers=("NHWC", "HWIO", "NHWC"),
  )


CASES = [
  # (function, input channels, output channels, pad, height, width)
  (rgb_layers.conv_space_to_depth, 3, 64, 3, 16, 12),  # 12 channels in: 16
  (rgb_layers.conv_space_to_depth, 64, 3, 3, 16, 12),  # 12 channels out: 16
  (rgb_layers.conv_space_to_depth, 6, 2, 2, 12, 8),  # 5-pixel kernel: 3x3 blocks
  (functools.partial(rgb_layers.conv_space_to_depth, block=4), 3, 4, 3, 16, 12),
]


@pytest.mark.parametrize("fn,cin,cout,pad,h,w", CASES)
@pytest.mark.parametrize("ops", padding.REFLECT_PAD_OPS)
def test_equals_reflect_padded_conv(fn, cin, cout, pad, h, w, ops):
  kx, kk, kc = jax.random.split(jax.random.PRNGKey(cin + pad), 3)
  x = jax.random.normal(kx, (2, h, w, cin))
  kernel = jax.random.normal(kk, (2 * pad + 1, 2 * pad + 1, cin, cout))
  out = fn(x, kernel, pad, ops)
  assert out.shape == (2, h, w, cout)
  ref = _reference(x, kernel, pad)
  # Sums of up to 3,136 products of unit normals in float32 (rounding ~1e-6
  # of the largest output).
  np.testing.assert_allclose(out, ref, rtol=0, atol=3e-6 * float(jnp.abs(ref).max()))

  cotangent = jax.random.normal(kc, ref.shape)
  grads = jax.grad(lambda x, k: jnp.sum(fn(x, k, pad, ops) * cotangent), (0, 1))(x, kernel)
  grads_ref = jax.grad(lambda x, k: jnp.sum(_reference(x, k, pad) * cotangent), (0, 1))(x, kernel)
  for g, g_ref in zip(grads, grads_ref):
    np.testing.assert_allclose(g, g_ref, rtol=0, atol=2e-3 * float(jnp.abs(g_ref).max()))
  jaxpr = str(jax.make_jaxpr(jax.grad(lambda x, k: jnp.sum(fn(x, k, pad, ops)), (0, 1)))(x, kernel))
  assert "scatter" not in jaxpr


def test_space_to_depth_is_one_convolution_with_tensor_core_channel_counts():
  """Forward: one convolution, 16 input and 256 output channels for the
  generator's input layer (3 -> 64, 7x7: 4x4 blocks of 2x2 pixels)."""
  jaxpr = jax.make_jaxpr(lambda x, k: rgb_layers.conv_space_to_depth(x, k, 3, "gather"))(
    jnp.zeros((2, 16, 16, 3)), jnp.zeros((7, 7, 3, 64))
  )
  convs = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "conv_general_dilated"]
  assert [e.invars[1].aval.shape for e in convs] == [(4, 4, 16, 256)]


def test_kernel_size_must_match_padding():
  with pytest.raises(ValueError, match=r"kernel \(5, 5, 3, 8\) is not 7x7"):
    rgb_layers.conv_space_to_depth(jnp.zeros((1, 8, 8, 3)), jnp.zeros((5, 5, 3, 8)), 3, "gather")
  with pytest.raises(ValueError, match="image 9x8 is not a multiple of the 2-pixel block"):
    rgb_layers.conv_space_to_depth(jnp.zeros((1, 9, 8, 3)), jnp.zeros((7, 7, 3, 8)), 3, "gather")
