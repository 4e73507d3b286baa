"""layers.bias_add and layers.Conv: float32 bias gradients under bfloat16
compute, with nn.Conv's parameters; norm_kernels.norm_act_pad and Norm: the
written-out BatchNorm gradient equals the automatic one."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from fit_jax.models import layers, norm_kernels, padding


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

  ours = layers.Conv(
    5, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)), add_bias=True, bias_init=bias_init
  )
  theirs = nn.Conv(5, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)), bias_init=bias_init)
  v = ours.init(jax.random.PRNGKey(1), x)
  v_ref = theirs.init(jax.random.PRNGKey(1), x)
  assert jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), v, v_ref) == {
    "params": {"kernel": True, "bias": True}
  }
  np.testing.assert_allclose(ours.apply(v, x), theirs.apply(v, x), rtol=1e-6)
  no_bias = layers.Conv(5, (3, 3)).init(jax.random.PRNGKey(1), x)
  assert list(no_bias["params"]) == ["kernel"]
  with pytest.raises(ValueError, match="layers.Conv takes add_bias, not use_bias"):
    layers.Conv(5, (3, 3), use_bias=True).init(jax.random.PRNGKey(1), x)


@pytest.mark.parametrize(
  "groups,dtype,relu,pad,upsample",
  [
    # Norm groups of 3 images, 2 fused calls (Norm's layout): every activation
    # and padding the generator uses.
    ((2, 3, 2), jnp.float32, False, 0, 1),
    ((2, 3, 2), jnp.float32, True, 1, 1),
    ((2, 3, 2), jnp.bfloat16, True, 1, 1),
    ((2, 3, 2), jnp.float32, True, 1, 2),
    ((2, 3, 2), jnp.bfloat16, True, 3, 1),
    ((2, 3, 2), jnp.float32, True, 0, 1),
    ((12, 1, 1), jnp.float32, True, 1, 1),  # instance statistics
  ],
)
def test_norm_act_pad_gradient_is_the_automatic_one(groups, dtype, relu, pad, upsample):
  keys = jax.random.split(jax.random.PRNGKey(0), 6)
  shape = (12, 6, 8, 6)
  # An offset mean and a channel of near-constant values: the regimes where
  # a careless formula loses precision.
  x = (jax.random.normal(keys[0], shape) * jnp.array([1, 2, 0.5, 3, 1, 1e-3]) + 2).astype(dtype)
  scale = 1 + 0.1 * jax.random.normal(keys[1], (6,))
  bias = 0.1 * jax.random.normal(keys[2], (6,))
  args = (groups, 1e-5, dtype, relu, pad, upsample)
  out, vjp = jax.vjp(lambda *a: norm_kernels.norm_act_pad(*a, *args), x, scale, bias)
  ref_out, ref_vjp = jax.vjp(
    lambda *a: norm_kernels.norm_act_pad_reference(*a, *args), x, scale, bias
  )
  for a, b in zip(out, ref_out):
    np.testing.assert_array_equal(a, b)
  assert out[0].shape == (12, (6 * upsample + 2 * pad), (8 * upsample + 2 * pad), 6)
  assert out[0].dtype == dtype and (not relu or bool(jnp.any(out[0] == 0)))
  # Every output has a cotangent, the statistics' too (running averages).
  cotangents = tuple(jax.random.normal(k, o.shape).astype(o.dtype) for k, o in zip(keys[3:], out))
  ours, ref = vjp(cotangents), ref_vjp(cotangents)
  assert [g.dtype for g in ours] == [dtype, jnp.float32, jnp.float32]
  # The near-constant channel (5) is compared with float64 below: there the
  # automatic gradient itself is off by ~0.5 % (its d(scale) is a difference
  # of two sums far larger than the result).
  # Every formulation of the per-group sums gives the same gradients: the
  # TPU's (one reduction, over x's grid from P^T g or over the padded grid)
  # and the GPU's (columns first; bfloat16 only).
  residuals = (x, out[1], out[2], scale, bias)
  others = [
    norm_kernels._norm_act_pad_grads(
      *args, residuals, cotangents, sums_on_input_grid=on_input, columns_first=columns_first
    )
    for on_input, columns_first in ((True, False), (False, False), (False, True))
  ]
  for ours_or_tpus in (ours, *others):
    for g, r in zip(ours_or_tpus, ref):
      g, r = np.asarray(g, np.float32)[..., :5], np.asarray(r, np.float32)[..., :5]
      # bfloat16: both round dx once to 8 bits from float32 sums.
      tol = 1e-4 if dtype == jnp.float32 else 1e-2
      np.testing.assert_allclose(g, r, rtol=tol, atol=tol * float(np.abs(r).max()))
  if dtype != jnp.float32 or pad or relu:
    return
  # The textbook gradient in float64, with the statistics' cotangents:
  # every channel within float32 rounding.
  x64 = np.asarray(x, np.float64).reshape(groups + shape[1:])
  dy, dmean, dvar = (np.asarray(c, np.float64) for c in cotangents)
  dy = dy.reshape(x64.shape)
  axes, n = (1, 3, 4), groups[1] * shape[1] * shape[2]
  mean = x64.mean(axis=axes, keepdims=True)
  var = x64.var(axis=axes, keepdims=True)
  rstd = 1 / np.sqrt(var + 1e-5)
  xhat = (x64 - mean) * rstd
  sum_dy, sum_dy_xhat = dy.sum(axis=axes, keepdims=True), (dy * xhat).sum(axis=axes, keepdims=True)
  dx = (
    np.asarray(scale, np.float64) * rstd * (dy - (sum_dy + xhat * sum_dy_xhat) / n)
    + (dmean + 2 * dvar * (x64 - mean)) / n
  )
  expected = [
    dx.reshape(shape),
    (dy * xhat).sum(axis=(0, 1, 2, 3, 4)),
    dy.sum(axis=(0, 1, 2, 3, 4)),
  ]
  for g, r, e in zip(ours, ref, expected):
    g, r = np.asarray(g, np.float64), np.asarray(r, np.float64)
    np.testing.assert_allclose(g[..., :5], e[..., :5], rtol=1e-4, atol=1e-4 * np.abs(e).max())
    # Channel 5 inherits the float32 mean's rounding (~1e-4 of its spread),
    # in the forward too; the automatic gradient is further off.
    assert np.abs(g - e)[..., 5].max() <= np.abs(r - e)[..., 5].max()


@pytest.mark.parametrize(
  "mode,train,pad_ops",
  [
    ("batch_stats", True, "gather"),
    ("batch", True, "gather"),
    ("batch", False, "gather"),
    ("instance", True, "gather"),
    ("folded", False, "gather"),
    ("batch_stats", True, "concatenate"),
  ],
)
def test_norm_with_relu_and_padding_is_the_composition(mode, train, pad_ops):
  """Norm(relu=True, pad, upsample) == reflect_pad(relu(Norm(x))) in every
  mode, parameters, running statistics and gradients included."""
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 6, 6, 3)) * 2 + 1
  norm = layers.Norm(mode, group_size=2)
  variables = norm.init(jax.random.PRNGKey(1), x, train=train)
  if mode == "batch":  # non-trivial running statistics
    variables = {**variables, "batch_stats": {"mean": jnp.arange(3.0), "var": jnp.arange(1.0, 4.0)}}
  if mode == "folded":
    variables = {"params": {"bias": jnp.array([0.5, -0.5, 0.0])}}

  def fused(params, x):
    return norm.apply(
      {**variables, "params": params},
      x,
      train,
      stat_groups=2,
      relu=True,
      pad=1,
      upsample=2,
      pad_ops=pad_ops,
      mutable=["batch_stats"],
    )

  def composed(params, x):
    y, updates = norm.apply(
      {**variables, "params": params}, x, train, stat_groups=2, mutable=["batch_stats"]
    )
    return padding.reflect_pad_reference(jax.nn.relu(y), 1, 2), updates

  (out, updates), (ref, ref_updates) = (
    fused(variables["params"], x),
    composed(variables["params"], x),
  )
  assert out.shape == (4, 14, 14, 3)
  np.testing.assert_allclose(out, ref, atol=1e-6)
  for a, b in zip(jax.tree.leaves(updates), jax.tree.leaves(ref_updates)):
    np.testing.assert_allclose(a, b, rtol=1e-6)
  weights = jax.random.normal(jax.random.PRNGKey(2), out.shape)
  grads = jax.grad(lambda *a: jnp.sum(fused(*a)[0] * weights), (0, 1))(variables["params"], x)
  ref_grads = jax.grad(lambda *a: jnp.sum(composed(*a)[0] * weights), (0, 1))(
    variables["params"], x
  )
  for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_one_pass_moments_are_as_accurate_as_two_passes():
  """The shifted one-pass statistics against float64, where the plain
  E[x^2] - E[x]^2 would cancel: a mean 1,000x the spread, and a first row
  (the shift's source) far from the rest."""
  rng = np.random.default_rng(0)
  x = rng.normal(100.0, 0.01, (2, 4, 1, 16, 16, 3)).astype(np.float32)
  x[:, :, :, 0] += 0.5  # the first rows: 50 standard deviations off
  mean, var = norm_kernels._moments(jnp.asarray(x), (1, 3, 4))
  x64 = x.astype(np.float64)
  np.testing.assert_allclose(mean, x64.mean(axis=(1, 3, 4), keepdims=True), rtol=1e-7)
  np.testing.assert_allclose(var, x64.var(axis=(1, 3, 4), keepdims=True), rtol=1e-4)
  # The unshifted one-pass form, in float32, is off by percents here.
  naive = np.mean(x**2, axis=(1, 3, 4)) - np.mean(x, axis=(1, 3, 4)) ** 2
  assert np.abs(naive / x64.var(axis=(1, 3, 4)) - 1).max() > 1e-2


def test_edge_pad_is_jnp_pad_with_a_scatter_free_gradient():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 4, 3))
  weights = jax.random.normal(jax.random.PRNGKey(1), (2, 9, 8, 3))
  for ops in ("gather", "concatenate"):
    np.testing.assert_array_equal(padding.edge_pad(x, 2, ops=ops), padding.edge_pad_reference(x, 2))

  def loss(pad_fn, x):
    return jnp.sum(pad_fn(x, 2) * weights)

  grad = jax.grad(functools.partial(loss, padding.edge_pad))
  np.testing.assert_allclose(
    grad(x), jax.grad(functools.partial(loss, padding.edge_pad_reference))(x), rtol=1e-6
  )
  assert "scatter" not in str(jax.make_jaxpr(grad)(x))
  with pytest.raises(ValueError, match="edge pad ops 'wrap' is not one of"):
    padding.edge_pad(x, 1, ops="wrap")


@pytest.mark.parametrize(
  "mode,pad_fn", [("reflect", padding.reflect_pad), ("edge", padding.edge_pad)]
)
@pytest.mark.parametrize("shape,pad", [((2, 7, 9, 3), 1), ((1, 10, 8, 2), 2)])
def test_rewrite_border_is_a_padding_of_the_interior(shape, pad, mode, pad_fn):
  x = jax.random.normal(jax.random.PRNGKey(0), shape)
  want = pad_fn(x, pad)
  junk = jnp.full(want.shape, 9.0).at[:, pad:-pad, pad:-pad].set(x)
  np.testing.assert_array_equal(padding.rewrite_border(junk, pad, mode), want)
  with pytest.raises(ValueError, match="no interior"):
    padding.rewrite_border(jnp.zeros((1, 3, 3, 1)), 1, mode)
  with pytest.raises(ValueError, match="border mode 'wrap' is not one of"):
    padding.rewrite_border(junk, pad, "wrap")
