"""Building blocks shared by the fit_jax networks.

The original networks (CycleGAN's `ResnetGenerator`/`NLayerDiscriminator`)
use reflect padding, BatchNorm without running statistics and N(0, 0.02)
weight init. Those choices live here, once.
"""

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

Dtype = Any

# CycleGAN's `init_weights(net, 'normal', 0.02)` in the original networks.py.
conv_init = nn.initializers.normal(stddev=0.02)

NORM_MODES = ("batch_stats", "batch", "instance", "folded")


REFLECT_PAD_OPS = ("gather", "concatenate")


def reflect_pad(x: jax.Array, pad: int, upsample: int = 1, ops: str = "gather") -> jax.Array:
  """nn.ReflectionPad2d(pad) of an NHWC tensor, after an optional nearest
  upsampling by `upsample` (nn.Upsample(scale_factor=upsample)).

  Computed as one gather of x with constant indices, which XLA emits as a
  single pass over memory (on GPU, jnp.pad's reflect mode is one
  concatenate pass per axis, and an upsampling before it one more pass over
  the 4x map). Its gradient is written out (custom_vjp) as the transpose of
  the plain upsample-then-pad composition: the automatic transpose of a
  gather is a scatter-add, which GPUs run with atomics.

  `ops="concatenate"` computes the same values with jnp.pad's
  concatenations instead, which TFLite's converter turns into builtins (it
  has none for a gather whose batch size is only known at run time).
  """
  if ops not in REFLECT_PAD_OPS:
    raise ValueError(f"reflect pad ops {ops!r} is not one of {REFLECT_PAD_OPS}")
  if pad == 0 and upsample == 1:
    return x
  if ops == "concatenate":
    return reflect_pad_reference(x, pad, upsample)
  return _reflect_pad(x, pad, upsample)


def reflect_pad_reference(x: jax.Array, pad: int, upsample: int = 1) -> jax.Array:
  """The same function as reflect_pad, composed of the plain operations."""
  if upsample > 1:
    b, h, w, c = x.shape
    x = jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, upsample, w, upsample, c))
    x = x.reshape(b, h * upsample, w * upsample, c)
  return jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")


def _reflect_indices(size: int, pad: int, upsample: int) -> np.ndarray:
  """For each row of the padded, upsampled axis, the row of x it copies."""
  full = size * upsample
  if pad >= full:
    raise ValueError(f"reflect padding {pad} needs more than {full} pixels")
  rows = np.abs(np.arange(-pad, full + pad))
  rows = np.where(rows > full - 1, 2 * (full - 1) - rows, rows)
  return rows // upsample


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _reflect_pad(x, pad, upsample):
  rows = _reflect_indices(x.shape[1], pad, upsample)
  cols = _reflect_indices(x.shape[2], pad, upsample)
  return x[:, rows[:, None], cols[None, :]]


def _reflect_pad_fwd(x, pad, upsample):
  return _reflect_pad(x, pad, upsample), None


def _reflect_pad_bwd(pad, upsample, _, grad):
  return (_reflect_pad_transpose(grad, pad, upsample),)


def _reflect_pad_transpose(grad: jax.Array, pad: int, upsample: int,
                           dtype=None) -> jax.Array:
  """The transpose of reflect_pad (no scatter): each pixel of x sums the
  cells of the padded, upsampled grid that copy it, accumulated in float32
  and returned in `dtype` (default: grad's).

  Two formulations of the same sums, chosen by the platform XLA compiles for:
  - GPU and CPU: the linear transpose of jnp.pad's reflect mode, a chain of
    four slice/add steps and, when upsampling, a reduction of the x2 map.
    XLA:GPU fuses all of it into the consumer (the BatchNorm gradient).
  - TPU: one sum of strided slices of `grad`, each zero-padded into place
    (per axis, the u phases of the upsampling as stride-u slices, plus the
    mirrored border rows). XLA:TPU runs the chain as four passes over the map
    and a reduce: its cost model put them at 31 of 47 ms of up_norm_0's
    backward pass (batch 144, one v5e chip), 12 ms as one sum. XLA:GPU, in
    turn, writes the one sum out in float32 where it would feed two fusions
    (+1.5 GB per bf16 training iteration on an H200 target).
  """
  dtype = grad.dtype if dtype is None else dtype
  return jax.lax.platform_dependent(
    grad,
    tpu=functools.partial(_transpose_as_slices, pad=pad, upsample=upsample, dtype=dtype),
    default=functools.partial(_transpose_as_chain, pad=pad, upsample=upsample, dtype=dtype))


def _transpose_as_chain(grad: jax.Array, pad: int, upsample: int, dtype) -> jax.Array:
  b, h, w, c = grad.shape
  shape = (b, (h - 2 * pad) // upsample, (w - 2 * pad) // upsample, c)
  transpose = jax.linear_transpose(
    functools.partial(reflect_pad_reference, pad=pad, upsample=upsample),
    jax.ShapeDtypeStruct(shape, jnp.float32))
  return transpose(grad.astype(jnp.float32))[0].astype(dtype)


def _transpose_as_slices(grad: jax.Array, pad: int, upsample: int, dtype) -> jax.Array:
  b, h, w, c = grad.shape
  total = None
  for r0, r1, r_step, r_flip, r_low, r_high in _transpose_terms(h, pad, upsample):
    for c0, c1, c_step, c_flip, c_low, c_high in _transpose_terms(w, pad, upsample):
      term = jax.lax.slice(grad, (0, r0, c0, 0), (b, r1, c1, c), (1, r_step, c_step, 1))
      flips = [1] * r_flip + [2] * c_flip
      term = (jax.lax.rev(term, flips) if flips else term).astype(jnp.float32)
      if r_low or r_high or c_low or c_high:
        term = jax.lax.pad(term, jnp.float32(0),
                           ((0, 0, 0), (r_low, r_high, 0), (c_low, c_high, 0), (0, 0, 0)))
      total = term if total is None else total + term
  return total.astype(dtype)


def _transpose_terms(size: int, pad: int, upsample: int) -> list[tuple]:
  """Along one axis of the padded grid (`size` cells): the slices whose sum
  is the transpose, as (start, stop, stride, flipped, zeros before, zeros
  after) in x's rows."""
  full = size - 2 * pad
  n = full // upsample
  if upsample == 1:  # the centre, then each border as one mirrored block
    return [(pad, pad + n, 1, False, 0, 0), (0, pad, 1, True, 1, n - 1 - pad),
            (pad + n, size, 1, True, n - 1 - pad, 1)]
  terms = [(pad + phase, pad + phase + upsample * (n - 1) + 1, upsample, False, 0, 0)
           for phase in range(upsample)]
  rows = _reflect_indices(n, pad, upsample)
  for cell in [*range(pad), *range(pad + full, size)]:  # each border cell's row
    terms.append((cell, cell + 1, 1, False, rows[cell], n - 1 - rows[cell]))
  return terms


_reflect_pad.defvjp(_reflect_pad_fwd, _reflect_pad_bwd)


BORDER_MODES = ("reflect", "edge")


def rewrite_border(y: jax.Array, pad: int, mode: str = "reflect") -> jax.Array:
  """y [B, H, W, C] with its `pad`-pixel border replaced by a padding of its
  interior, whatever the border held: reflect_pad(y[:, pad:-pad, pad:-pad],
  pad) for `mode="reflect"`, edge_pad(...) for `"edge"`.

  For maps kept padded from one convolution to the next: a convolution over
  the whole padded map with zero padding computes the interior exactly and
  garbage on the border, which this rewrites. It is one gather of the
  border's sources and one scatter into y, which XLA runs in place: it moves
  the border's bytes, where reflect_pad writes a whole new map. Folded
  inference uses it (generator.Generator.folded_trunk_padding); training
  keeps reflect_pad, whose gradient is written out without a scatter-add.
  """
  if mode not in BORDER_MODES:
    raise ValueError(f"border mode {mode!r} is not one of {BORDER_MODES}")
  if pad == 0:
    return y
  h, w = y.shape[1], y.shape[2]
  if min(h, w) <= 3 * pad:
    raise ValueError(f"a {h}x{w} map has no interior to pad a {pad}-pixel border from")

  def sources(n):  # padded coordinate -> the padded coordinate of the pixel it copies
    if mode == "edge":
      return np.clip(np.arange(n), pad, n - pad - 1)
    return _reflect_indices(n - 2 * pad, pad, 1) + pad

  rows, cols = sources(h), sources(w)
  r, c = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
  border = (r < pad) | (r >= h - pad) | (c < pad) | (c >= w - pad)
  dst_r, dst_c = r[border], c[border]
  return y.at[:, dst_r, dst_c].set(
    y[:, rows[dst_r], cols[dst_c]], unique_indices=True, indices_are_sorted=True)


def edge_pad(x: jax.Array, pad: int, ops: str = "gather") -> jax.Array:
  """jnp.pad(x, mode="edge") over H and W of an NHWC tensor: as reflect_pad,
  one gather with constant indices and a gradient of slices and adds (jnp.pad
  is a concatenate pass per axis); `ops="concatenate"` keeps jnp.pad's."""
  if ops not in REFLECT_PAD_OPS:
    raise ValueError(f"edge pad ops {ops!r} is not one of {REFLECT_PAD_OPS}")
  if pad == 0:
    return x
  if ops == "concatenate":
    return edge_pad_reference(x, pad)
  return _edge_pad(x, pad)


def edge_pad_reference(x: jax.Array, pad: int) -> jax.Array:
  return jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="edge")


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _edge_pad(x, pad):
  rows = np.clip(np.arange(-pad, x.shape[1] + pad), 0, x.shape[1] - 1)
  cols = np.clip(np.arange(-pad, x.shape[2] + pad), 0, x.shape[2] - 1)
  return x[:, rows[:, None], cols[None, :]]


def _edge_pad_fwd(x, pad):
  return _edge_pad(x, pad), None


def _edge_pad_bwd(pad, _, grad):
  b, h, w, c = grad.shape
  transpose = jax.linear_transpose(
    functools.partial(_edge_pad_by_slices, pad=pad),
    jax.ShapeDtypeStruct((b, h - 2 * pad, w - 2 * pad, c), grad.dtype))
  return transpose(grad)


def _edge_pad_by_slices(x, pad):
  """edge_pad_reference's values from slices of H and W only. jnp.pad's edge
  mode also slices every axis it leaves unpadded; transposed, the batch
  axis's slice became a zero padding of the batch, which XLA's SPMD
  partitioner turned into a collective-permute between the devices of a
  data-parallel mesh (tests/train_test.py checks that none remains)."""
  for axis in (1, 2):
    n = x.shape[axis]
    first = jax.lax.slice_in_dim(x, 0, 1, axis=axis)
    last = jax.lax.slice_in_dim(x, n - 1, n, axis=axis)
    x = jnp.concatenate([first] * pad + [x] + [last] * pad, axis=axis)
  return x


_edge_pad.defvjp(_edge_pad_fwd, _edge_pad_bwd)


@jax.custom_vjp
def bias_add(x: jax.Array, bias: jax.Array) -> jax.Array:
  """x + bias over the last axis, in x's dtype, with the bias gradient summed
  in float32.

  The automatic gradient of a broadcast add sums the cotangent in its own
  dtype: in bfloat16 compute, a bias over a 128x128 map at batch 48 gets a
  sum of 786k bfloat16 terms (XLA on CPU accumulates them in bfloat16 and
  loses most of the sum; tested). Here the cotangent is converted inside the
  reduction (XLA fuses the two: no extra pass over memory).
  """
  return x + bias.astype(x.dtype)


def _bias_add_fwd(x, bias):
  return bias_add(x, bias), jnp.zeros((0,), bias.dtype)


def _bias_add_bwd(bias_dtype_carrier, grad):
  axes = tuple(range(grad.ndim - 1))
  return grad, jnp.sum(grad, axis=axes, dtype=jnp.float32).astype(bias_dtype_carrier.dtype)


bias_add.defvjp(_bias_add_fwd, _bias_add_bwd)


class Conv(nn.Conv):
  """nn.Conv, no bias by default, whose `add_bias` is added with bias_add.

  Same parameters ("kernel", then "bias") as nn.Conv(use_bias=True), so
  checkpoints and converters see no difference.
  """

  use_bias: bool = False
  add_bias: bool = False

  @nn.compact
  def __call__(self, inputs: jax.Array) -> jax.Array:
    if self.use_bias:
      raise ValueError("layers.Conv takes add_bias, not use_bias")
    y = super().__call__(inputs)
    if not self.add_bias:
      return y
    bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
    return bias_add(y, bias)


class Norm(nn.Module):
  """BatchNorm / InstanceNorm with the original's semantics.

  Modes:
    batch_stats: the reference. BatchNorm2d(track_running_stats=False):
      every call, at train and at test time, normalises with the statistics of
      the current batch. No `batch_stats` collection exists.
    batch: batch statistics while training; running averages (momentum 0.1
      as torch) are kept in the `batch_stats` collection and used when
      `train=False`. Per-image deterministic at inference.
    instance: per-image, per-channel statistics (affine, unlike CycleGAN's
      default InstanceNorm, so every mode has the same parameters and a
      reference checkpoint loads into any of them). Per-image deterministic.
    folded: inference only; `batch` mode's running statistics and scale
      already folded into the preceding convolution (fit_jax.inference), so
      only a per-channel bias is left, which XLA fuses into the convolution.

  `group_size` > 0 computes batch statistics over consecutive groups of that
  many images, the way the reference's DataParallel computed them per GPU
  (12 images each); 0 uses the whole (global) batch. Statistics are always
  computed in float32.

  `stat_groups` (a call argument) says the batch holds that many calls'
  equal batches, interleaved image by image (row `b * stat_groups + i` is
  image b of call i, as train._fuse lays them out), whose statistics never
  mix: one call on the fused batch computes exactly what separate calls
  would. Interleaving keeps every device's images of all calls on that
  device, so the fused batch shards like the separate ones.

  The call can also apply the ReLU and the reflect padding (with nearest
  upsampling) of the next convolution's input (`relu`, `pad`, `upsample`):
  the same values as composing them, with batch or instance statistics
  through norm_act_pad, whose gradient reads the map twice instead of ~5
  times.
  """

  mode: str = "batch_stats"
  group_size: int = 0
  momentum: float = 0.1
  epsilon: float = 1e-5
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(
    self, x: jax.Array, train: bool, stat_groups: int = 1, *, relu: bool = False,
    pad: int = 0, upsample: int = 1, pad_ops: str = "gather",
  ) -> jax.Array:
    """Normalises x [B, H, W, C]; then, if asked, a ReLU and reflect_pad(.,
    pad, upsample, pad_ops): the next convolution's input. With batch or
    instance statistics the three go through norm_act_pad, whose gradient
    takes fewer passes over memory than the automatic one."""
    if self.mode not in NORM_MODES:
      raise ValueError(f"norm mode {self.mode!r} is not one of {NORM_MODES}")
    features = x.shape[-1]

    def finish(y):  # ReLU and padding after running statistics or folding
      return reflect_pad(jax.nn.relu(y) if relu else y, pad, upsample, ops=pad_ops)

    if self.mode == "folded":
      bias = self.param("bias", nn.initializers.zeros, (features,), self.param_dtype)
      return finish((x + bias.astype(x.dtype)).astype(self.dtype))
    scale = self.param(
      "scale",
      lambda k, s, d: 1.0 + 0.02 * jax.random.normal(k, s, d),
      (features,),
      self.param_dtype,
    )
    bias = self.param("bias", nn.initializers.zeros, (features,), self.param_dtype)

    if self.mode == "batch":
      ra_mean = self.variable(
        "batch_stats", "mean", jnp.zeros, (features,), jnp.float32
      )
      ra_var = self.variable("batch_stats", "var", jnp.ones, (features,), jnp.float32)
      if not train:
        return finish(_normalize(x.astype(jnp.float32), ra_mean.value, ra_var.value,
                                 scale, bias, self.epsilon, self.dtype))

    batch = x.shape[0]
    if self.mode == "instance":
      groups = (batch, 1, 1)
    else:
      if batch % stat_groups:
        raise ValueError(f"batch {batch} is not divisible into {stat_groups} stat groups")
      chunk = batch // stat_groups
      group = self.group_size if 0 < self.group_size < chunk else chunk
      if chunk % group:
        raise ValueError(
          f"batch {chunk} is not divisible by the norm group size {group}"
        )
      groups = (chunk // group, group, stat_groups)
    if pad_ops == "gather":
      y, mean, var = norm_act_pad(
        x, scale, bias, groups, self.epsilon, self.dtype, relu, pad, upsample)
    else:  # TFLite-friendly padding ops: the plain composition
      y, mean, var = norm_act_pad_reference(
        x, scale, bias, groups, self.epsilon, self.dtype, relu, 0, 1)
      y = reflect_pad(y, pad, upsample, ops=pad_ops)

    if self.mode != "instance" and self.is_mutable_collection("norm_moments"):
      # Each norm group's mean and (biased) variance, for estimating running
      # statistics after training (fit_jax.calibrate).
      self.sow("norm_moments", "mean", mean.reshape(-1, features))
      self.sow("norm_moments", "var", var.reshape(-1, features))
    if self.mode == "batch" and train and not self.is_initializing():
      # torch updates running_var with the unbiased variance.
      n = groups[1] * x.shape[1] * x.shape[2]
      unbiased = jnp.mean(var.reshape(-1, features), axis=0) * n / max(n - 1, 1)
      m = self.momentum
      ra_mean.value = (1 - m) * ra_mean.value + m * jnp.mean(
        mean.reshape(-1, features), axis=0)
      ra_var.value = (1 - m) * ra_var.value + m * unbiased
    return y

def _normalize(x, mean, var, scale, bias, epsilon, dtype):
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
  y = _normalize(x32, mean, var, scale, bias, epsilon, dtype).reshape(x.shape)
  if relu:
    y = jax.nn.relu(y)
  return reflect_pad(y, pad, upsample), mean, var


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
    residuals, cotangents,
    tpu=functools.partial(grads, sums_on_input_grid=upsample > 1, columns_first=False),
    default=functools.partial(grads, sums_on_input_grid=False, columns_first=columns_first))


def _norm_act_pad_grads(groups, epsilon, dtype, relu, pad, upsample, residuals, cotangents,
                        sums_on_input_grid: bool, columns_first: bool = False):
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
    return centered, xhat, _normalize(x32, mean, var, scale, bias, epsilon, dtype) > 0

  def masked(g, mask):
    g = _grouped(g.astype(jnp.float32), groups)
    return g if mask is None else jnp.where(mask, g, 0.0)

  def group_sums(x, dy):  # sum(dy) and sum(dy * xhat), one multi-output reduction
    _, xhat, mask = terms(x)
    dy = masked(dy, mask)
    if not columns_first:
      return (jnp.sum(dy, axis=_GROUP_AXES, keepdims=True),
              jnp.sum(dy * xhat, axis=_GROUP_AXES, keepdims=True))
    # As one reduction over images, rows and columns, XLA:GPU gave each of
    # the two sums its own copy of the ReLU mask's producer and, rather than
    # repeat its gather of x, wrote the mask out and read it back (the
    # residual blocks' first norms: 18 kernels, 2.2 GB of a bf16 training
    # iteration at paper size; benchmarks/README.md, thirteenth session).
    # Over columns first, the partial sums fenced (a few MB) so that XLA
    # does not merge the stages back, the mask stays in the reduction.
    columns = jax.lax.optimization_barrier((jnp.sum(dy, axis=4, keepdims=True),
                                            jnp.sum(dy * xhat, axis=4, keepdims=True)))
    return tuple(jnp.sum(c, axis=(1, 3), keepdims=True) for c in columns)

  if sums_on_input_grid and (pad or upsample > 1):
    sum_dy, sum_dy_xhat = group_sums(x, _reflect_pad_transpose(g_out, pad, upsample, jnp.float32))
  elif pad or upsample > 1:
    sum_dy, sum_dy_xhat = group_sums(reflect_pad(x, pad, upsample), g_out)
  else:
    sum_dy, sum_dy_xhat = group_sums(x, g_out)
  # XLA would fold the per-channel totals below (a reduce of these reduces)
  # into reductions of the whole tensor again: one more pass over x and g.
  sum_dy, sum_dy_xhat = jax.lax.optimization_barrier((sum_dy, sum_dy_xhat))
  channel_axes = tuple(range(sum_dy.ndim - 1))
  dbias = jnp.sum(sum_dy, axis=channel_axes)
  dscale = jnp.sum(sum_dy_xhat, axis=channel_axes)

  g = (_reflect_pad_transpose(g_out, pad, upsample, jnp.float32)
       if pad or upsample > 1 else g_out)
  centered, xhat, mask = terms(x)
  dy = masked(g, mask)
  dx = (scale.astype(jnp.float32) * rstd) * (dy - (sum_dy + xhat * sum_dy_xhat) / n)
  # The statistics' own cotangents (zero unless something differentiates
  # them, such as a loss on running averages): mean = sum(x) / n and
  # var = sum((x - mean)^2) / n, whose path through the mean is 0.
  dx = dx + (dmean + 2.0 * dvar * centered) / n
  return (dx.reshape(x.shape).astype(x.dtype), dscale.astype(scale.dtype),
          dbias.astype(bias.dtype))


norm_act_pad.defvjp(_norm_act_pad_fwd, _norm_act_pad_bwd)


class PReLU(nn.Module):
  """Per-channel PReLU (torch nn.PReLU(C), init 0.25), as in sphere20a."""

  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    alpha = self.param(
      "alpha", nn.initializers.constant(0.25), (x.shape[-1],), self.param_dtype
    )
    return jnp.where(x >= 0, x, alpha.astype(x.dtype) * x)
