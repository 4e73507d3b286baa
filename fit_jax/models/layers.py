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
  b, h, w, c = grad.shape
  shape = (b, (h - 2 * pad) // upsample, (w - 2 * pad) // upsample, c)
  transpose = jax.linear_transpose(
    functools.partial(reflect_pad_reference, pad=pad, upsample=upsample),
    jax.ShapeDtypeStruct(shape, grad.dtype))
  return transpose(grad)


_reflect_pad.defvjp(_reflect_pad_fwd, _reflect_pad_bwd)


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
  """

  mode: str = "batch_stats"
  group_size: int = 0
  momentum: float = 0.1
  epsilon: float = 1e-5
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool, stat_groups: int = 1) -> jax.Array:
    if self.mode not in NORM_MODES:
      raise ValueError(f"norm mode {self.mode!r} is not one of {NORM_MODES}")
    features = x.shape[-1]
    if self.mode == "folded":
      bias = self.param("bias", nn.initializers.zeros, (features,), self.param_dtype)
      return (x + bias.astype(x.dtype)).astype(self.dtype)
    scale = self.param(
      "scale",
      lambda k, s, d: 1.0 + 0.02 * jax.random.normal(k, s, d),
      (features,),
      self.param_dtype,
    )
    bias = self.param("bias", nn.initializers.zeros, (features,), self.param_dtype)
    x32 = x.astype(jnp.float32)

    if self.mode == "instance":
      mean, var = _moments(x32, axes=(1, 2))
      return self._normalize(x32, mean, var, scale, bias)

    if self.mode == "batch":
      ra_mean = self.variable(
        "batch_stats", "mean", jnp.zeros, (features,), jnp.float32
      )
      ra_var = self.variable("batch_stats", "var", jnp.ones, (features,), jnp.float32)
      if not train:
        return self._normalize(x32, ra_mean.value, ra_var.value, scale, bias)

    batch = x32.shape[0]
    if batch % stat_groups:
      raise ValueError(f"batch {batch} is not divisible into {stat_groups} stat groups")
    chunk = batch // stat_groups
    group = self.group_size if 0 < self.group_size < chunk else chunk
    if chunk % group:
      raise ValueError(
        f"batch {chunk} is not divisible by the norm group size {group}"
      )
    # [norm groups, images per group, calls, H, W, C]
    grouped = x32.reshape((chunk // group, group, stat_groups) + x32.shape[1:])
    mean, var = _moments(grouped, axes=(1, 3, 4))
    y = self._normalize(grouped, mean, var, scale, bias).reshape(x.shape)

    if self.mode == "batch" and train and not self.is_initializing():
      # torch updates running_var with the unbiased variance.
      n = group * x.shape[1] * x.shape[2]
      unbiased = jnp.mean(var.reshape(-1, features), axis=0) * n / max(n - 1, 1)
      m = self.momentum
      ra_mean.value = (1 - m) * ra_mean.value + m * jnp.mean(
        mean.reshape(-1, features), axis=0)
      ra_var.value = (1 - m) * ra_var.value + m * unbiased
    return y

  def _normalize(self, x, mean, var, scale, bias):
    # One multiply-add per element: fold the statistics into scale and shift.
    inv = jax.lax.rsqrt(var + self.epsilon) * scale.astype(jnp.float32)
    shift = bias.astype(jnp.float32) - mean * inv
    return (x * inv + shift).astype(self.dtype)


def _moments(x: jax.Array, axes: tuple[int, ...]):
  """Mean and biased variance, two-pass for float32 accuracy.

  (A one-pass form, shifted sums of x - s and (x - s)^2, saved 1-2 % of a
  training iteration's memory traffic on an H200 target, but a data-derived
  shift s costs a collective wherever a norm group spans devices.)
  """
  mean = jnp.mean(x, axis=axes, keepdims=True)
  var = jnp.mean(jnp.square(x - mean), axis=axes, keepdims=True)
  return mean, var


class PReLU(nn.Module):
  """Per-channel PReLU (torch nn.PReLU(C), init 0.25), as in sphere20a."""

  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    alpha = self.param(
      "alpha", nn.initializers.constant(0.25), (x.shape[-1],), self.param_dtype
    )
    return jnp.where(x >= 0, x, alpha.astype(x.dtype) * x)
