"""The fused norm, ReLU and padding, with a hand-written gradient.

Every norm of the generator but the last is followed by a ReLU and the next
convolution's reflect padding. Composed, their automatic gradient reads the
normalised map about five times; norm_act_pad's reads it twice, from the
pre-norm input and the per-group statistics (the same values, tested), which
is most of a training step's memory traffic on a GPU. norm_act_pad_reference
is the plain composition, for tests and TFLite.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from fit_jax.models import padding


def normalize(x, mean, var, scale, bias, epsilon, dtype):
  # One multiply-add per element: fold the statistics into scale and shift.
  inv = jax.lax.rsqrt(var + epsilon) * scale.astype(jnp.float32)
  shift = bias.astype(jnp.float32) - mean * inv
  return (x * inv + shift).astype(dtype)


def _moments(x: jax.Array, axes: tuple[int, ...]):
  """Mean and biased variance over `axes` (the images' axis, then the rows',
  then the columns'), in one pass over x.

  The sums are of x - s, with s a per-group, per-channel shift near the
  mean, so the variance as E[(x - s)^2] - E[x - s]^2 loses nothing to
  cancellation: s is the mean of the group's first image row, a reduction
  of 1/H of the data, and a sum like the others, so a norm group spanning
  devices needs only the all-reduce it had. (The two-pass form, the mean and
  then E[(x - mean)^2], read every normalised map once more in the forward
  pass: 4.3 GB of a bf16 training iteration on an H200 target.)
  """
  first_row = jax.lax.slice_in_dim(x, 0, 1, axis=axes[1])
  shift = jax.lax.stop_gradient(jnp.mean(first_row, axis=axes, keepdims=True))
  shifted = x - shift
  mean_shifted = jnp.mean(shifted, axis=axes, keepdims=True)
  var = jnp.mean(jnp.square(shifted), axis=axes, keepdims=True) - jnp.square(mean_shifted)
  return shift + mean_shifted, jnp.maximum(var, 0.0)


def _grouped(x: jax.Array, groups: tuple[int, int, int]) -> jax.Array:
  """[B, H, W, C] -> [norm groups, images per group, calls, H, W, C]."""
  return x.reshape(tuple(groups) + x.shape[1:])


_GROUP_AXES = (1, 3, 4)


def norm_act_pad_reference(x, scale, bias, groups, epsilon, dtype, relu, pad, upsample):
  """norm_act_pad as plain operations (automatic gradient)."""
  x32 = _grouped(x.astype(jnp.float32), groups)
  mean, var = _moments(x32, _GROUP_AXES)
  y = normalize(x32, mean, var, scale, bias, epsilon, dtype).reshape(x.shape)
  if relu:
    y = jax.nn.relu(y)
  return padding.reflect_pad(y, pad, upsample), mean, var


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6, 7, 8))
def norm_act_pad(x, scale, bias, groups, epsilon, dtype, relu, pad, upsample):
  """BatchNorm's training forward with statistics per group, then an
  optional ReLU and reflect padding (with nearest upsampling): the input of
  the next convolution.

  Args:
    x: [B, H, W, C], any float dtype (statistics in float32).
    scale, bias: [C].
    groups: (norm groups, images per group, calls) with product B: the
      statistics are per norm group and call (see Norm); (B, 1, 1) gives
      per-image (instance) statistics.
    epsilon: added to the variance.
    dtype: of the output.
    relu: apply a ReLU after the affine map.
    pad, upsample: reflect_pad's, applied last (0 and 1: none).

  Returns:
    (output, mean, var), the statistics [groups[0], 1, groups[2], 1, 1, C].

  The same values as norm_act_pad_reference. Its automatic gradient took
  ~5 passes over x per layer on a GPU (with the earlier two-pass
  statistics: a whole reduction of x - mean for the mean's path through the
  variance, exactly 0; d(scale) and d(bias) in extra passes; the masked,
  unpadded cotangent written out and read back). The gradient here is the textbook
  one in two passes, both reading only x and the padded cotangent g:
  sum(dy) and sum(dy * xhat) per group, where dy = relu'(y) * P^T g (P the
  padding), are sum(g * P(relu'(y))) and sum(g * P(relu'(y) * xhat)):
  reductions on the padded grid of per-pixel functions of P(x), a gather
  of x; then dx from x and P^T g. (Computing the mask from P(x) rather than
  padding the mask keeps XLA from sharing, and so writing out, the mask.)
  """
  return norm_act_pad_reference(x, scale, bias, groups, epsilon, dtype, relu, pad, upsample)


def _norm_act_pad_fwd(x, scale, bias, groups, epsilon, dtype, relu, pad, upsample):
  out = norm_act_pad_reference(x, scale, bias, groups, epsilon, dtype, relu, pad, upsample)
  _, mean, var = out
  return out, (x, mean, var, scale, bias)


def _norm_act_pad_bwd(groups, epsilon, dtype, relu, pad, upsample, residuals, cotangents):
  grads = functools.partial(_norm_act_pad_grads, groups, epsilon, dtype, relu, pad, upsample)
  # The per-group sums, on GPU (and CPU): on the output's padded grid, from a
  # gather of x fused into the reduction, over columns first (see
  # _norm_act_pad_grads). On TPU: with upsampling, on x's grid (a quarter of
  # the cells), from P^T g in one fused pass, since XLA:TPU cannot fuse a
  # gather and wrote P(x) out in float32 (25 M cycles of a v5e training
  # step; its cost model puts up_norm_0's backward pass, batch 144, at 24 ms
  # this way and 28 ms from P(x)). Without upsampling, the padded grid is
  # the cheaper one on TPU too. The TPU sums in one stage: by its cost
  # model, columns first cost a v5e training step 161.5 -> 162.6 M cycles.
  # So does float32 elsewhere: its H200 training program went 206.0 ->
  # 207.0 GB with columns first (bfloat16: 104.2 -> 102.0 GB).
  columns_first = jnp.dtype(dtype).itemsize < 4
  return jax.lax.platform_dependent(
    residuals,
    cotangents,
    tpu=functools.partial(grads, sums_on_input_grid=upsample > 1, columns_first=False),
    default=functools.partial(grads, sums_on_input_grid=False, columns_first=columns_first),
  )


def _norm_act_pad_grads(
  groups,
  epsilon,
  dtype,
  relu,
  pad,
  upsample,
  residuals,
  cotangents,
  sums_on_input_grid: bool,
  columns_first: bool = False,
):
  """norm_act_pad's gradient, with its per-group sums over x's grid (from
  P^T g) or over the output's padded grid (from P(x)), in one reduction or
  over columns first (`columns_first`: partial sums fenced, then the rest)."""
  x, mean, var, scale, bias = residuals
  g_out, dmean, dvar = cotangents
  n = float(np.prod([groups[1], x.shape[1], x.shape[2]]))
  rstd = jax.lax.rsqrt(var + epsilon)

  def terms(x):  # per-pixel: (x - mean, xhat, relu'(y)) of grouped x
    x32 = _grouped(x.astype(jnp.float32), groups)
    centered = x32 - mean
    xhat = centered * rstd
    if not relu:
      return centered, xhat, None
    # The forward's own arithmetic and rounding, so the mask is its ReLU's.
    return centered, xhat, normalize(x32, mean, var, scale, bias, epsilon, dtype) > 0

  def masked(g, mask):
    g = _grouped(g.astype(jnp.float32), groups)
    return g if mask is None else jnp.where(mask, g, 0.0)

  def group_sums(x, dy):  # sum(dy) and sum(dy * xhat), one multi-output reduction
    _, xhat, mask = terms(x)
    dy = masked(dy, mask)
    if not columns_first:
      return (
        jnp.sum(dy, axis=_GROUP_AXES, keepdims=True),
        jnp.sum(dy * xhat, axis=_GROUP_AXES, keepdims=True),
      )
    # As one reduction over images, rows and columns, XLA:GPU gave each of
    # the two sums its own copy of the ReLU mask's producer and, rather than
    # repeat its gather of x, wrote the mask out and read it back (the
    # residual blocks' first norms: 18 kernels, 2.2 GB of a bf16 training
    # iteration at paper size; docs/performance.md).
    # Over columns first, the partial sums fenced (a few MB) so that XLA
    # does not merge the stages back, the mask stays in the reduction.
    columns = jax.lax.optimization_barrier(
      (jnp.sum(dy, axis=4, keepdims=True), jnp.sum(dy * xhat, axis=4, keepdims=True))
    )
    return tuple(jnp.sum(c, axis=(1, 3), keepdims=True) for c in columns)

  if sums_on_input_grid and (pad or upsample > 1):
    sum_dy, sum_dy_xhat = group_sums(
      x, padding.reflect_pad_transpose(g_out, pad, upsample, jnp.float32)
    )
  elif pad or upsample > 1:
    sum_dy, sum_dy_xhat = group_sums(padding.reflect_pad(x, pad, upsample), g_out)
  else:
    sum_dy, sum_dy_xhat = group_sums(x, g_out)
  # XLA would fold the per-channel totals below (a reduce of these reduces)
  # into reductions of the whole tensor again: one more pass over x and g.
  sum_dy, sum_dy_xhat = jax.lax.optimization_barrier((sum_dy, sum_dy_xhat))
  channel_axes = tuple(range(sum_dy.ndim - 1))
  dbias = jnp.sum(sum_dy, axis=channel_axes)
  dscale = jnp.sum(sum_dy_xhat, axis=channel_axes)

  g = (
    padding.reflect_pad_transpose(g_out, pad, upsample, jnp.float32)
    if pad or upsample > 1
    else g_out
  )
  centered, xhat, mask = terms(x)
  dy = masked(g, mask)
  dx = (scale.astype(jnp.float32) * rstd) * (dy - (sum_dy + xhat * sum_dy_xhat) / n)
  # The statistics' own cotangents (zero unless something differentiates
  # them, such as a loss on running averages): mean = sum(x) / n and
  # var = sum((x - mean)^2) / n, whose path through the mean is 0.
  dx = dx + (dmean + 2.0 * dvar * centered) / n
  return (dx.reshape(x.shape).astype(x.dtype), dscale.astype(scale.dtype), dbias.astype(bias.dtype))


norm_act_pad.defvjp(_norm_act_pad_fwd, _norm_act_pad_bwd)
