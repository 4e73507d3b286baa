"""The RGB-side convolutions written as matmuls equal lax.conv of the
reflect-padded input, in value and gradient, without scatters."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fit_jax.models import few_channel_conv, layers


def _reference(x, kernel, pad):
  return jax.lax.conv_general_dilated(
    layers.reflect_pad_reference(x, pad), kernel, (1, 1), "VALID",
    dimension_numbers=("NHWC", "HWIO", "NHWC"))


CASES = [
  # (function, input channels, output channels, pad, height, width)
  (few_channel_conv.conv_by_patches, 3, 8, 3, 16, 12),
  (few_channel_conv.conv_by_patches, 3, 5, 1, 9, 7),  # 27 deep: aligned to 32
  (few_channel_conv.conv_by_tap_products, 8, 3, 3, 16, 12),
  (few_channel_conv.conv_by_tap_products, 6, 2, 2, 11, 13),  # 50 taps: aligned to 56
]


@pytest.mark.parametrize("fn,cin,cout,pad,h,w", CASES)
@pytest.mark.parametrize("ops", layers.REFLECT_PAD_OPS)
def test_equals_reflect_padded_conv(fn, cin, cout, pad, h, w, ops):
  kx, kk, kc = jax.random.split(jax.random.PRNGKey(cin + pad), 3)
  x = jax.random.normal(kx, (2, h, w, cin))
  kernel = jax.random.normal(kk, (2 * pad + 1, 2 * pad + 1, cin, cout))
  out = fn(x, kernel, pad, ops)
  assert out.shape == (2, h, w, cout)
  ref = _reference(x, kernel, pad)
  # Sums of up to 392 products of unit normals (~20) in float32.
  np.testing.assert_allclose(out, ref, rtol=0, atol=1e-4)

  cotangent = jax.random.normal(kc, ref.shape)
  grads = jax.grad(lambda x, k: jnp.sum(fn(x, k, pad, ops) * cotangent), (0, 1))(x, kernel)
  grads_ref = jax.grad(lambda x, k: jnp.sum(_reference(x, k, pad) * cotangent), (0, 1))(x, kernel)
  for g, g_ref in zip(grads, grads_ref):
    np.testing.assert_allclose(g, g_ref, rtol=0, atol=2e-3 * float(jnp.abs(g_ref).max()))
  jaxpr = str(jax.make_jaxpr(jax.grad(lambda x, k: jnp.sum(fn(x, k, pad, ops)), (0, 1)))(x, kernel))
  assert "scatter" not in jaxpr
  assert "conv_general_dilated" not in jaxpr


def test_patches_are_rebuilt_not_kept_for_the_backward_pass():
  """conv_by_patches is rematerialised: what the backward pass keeps from the
  forward is its input, not the 49x wider patches."""
  x = jnp.ones((2, 16, 16, 3))
  kernel = jnp.ones((7, 7, 3, 8))
  _, residuals = jax.linearize(lambda x: few_channel_conv.conv_by_patches(x, kernel, 3, "gather"), x)
  sizes = [leaf.size for leaf in jax.tree.leaves(residuals)]
  assert max(sizes) <= x.size, sizes


def test_kernel_size_must_match_padding():
  with pytest.raises(ValueError, match=r"kernel \(5, 5, 3, 8\) is not 7x7"):
    few_channel_conv.conv_by_patches(jnp.zeros((1, 8, 8, 3)), jnp.zeros((5, 5, 3, 8)), 3, "gather")
  with pytest.raises(ValueError, match=r"kernel \(7, 7, 8, 3\) is not 3x3"):
    few_channel_conv.conv_by_tap_products(jnp.zeros((1, 8, 8, 8)), jnp.zeros((7, 7, 8, 3)), 1, "gather")
