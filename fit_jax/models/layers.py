"""Building blocks shared by the fit_jax networks.

The original networks (CycleGAN's `ResnetGenerator`/`NLayerDiscriminator`)
use reflect padding, BatchNorm without running statistics and N(0, 0.02)
weight init. Those choices live here, once.
"""

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from fit_jax.models import norm_kernels, padding

Dtype = Any

# CycleGAN's `init_weights(net, 'normal', 0.02)` in the original networks.py.
conv_init = nn.initializers.normal(stddev=0.02)

NORM_MODES = ("batch_stats", "batch", "instance", "folded")


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
      already folded into the preceding convolution (fit_jax.deploy.inference), so
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
    self,
    x: jax.Array,
    train: bool,
    stat_groups: int = 1,
    *,
    relu: bool = False,
    pad: int = 0,
    upsample: int = 1,
    pad_ops: str = "gather",
  ) -> jax.Array:
    """Normalises x [B, H, W, C]; then, if asked, a ReLU and padding.reflect_pad(.,
    pad, upsample, pad_ops): the next convolution's input. With batch or
    instance statistics the three go through norm_act_pad, whose gradient
    takes fewer passes over memory than the automatic one."""
    if self.mode not in NORM_MODES:
      raise ValueError(f"norm mode {self.mode!r} is not one of {NORM_MODES}")
    features = x.shape[-1]

    def finish(y):  # ReLU and padding after running statistics or folding
      return padding.reflect_pad(jax.nn.relu(y) if relu else y, pad, upsample, ops=pad_ops)

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
      ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (features,), jnp.float32)
      ra_var = self.variable("batch_stats", "var", jnp.ones, (features,), jnp.float32)
      if not train:
        return finish(
          norm_kernels.normalize(
            x.astype(jnp.float32),
            ra_mean.value,
            ra_var.value,
            scale,
            bias,
            self.epsilon,
            self.dtype,
          )
        )

    batch = x.shape[0]
    if self.mode == "instance":
      groups = (batch, 1, 1)
    else:
      if batch % stat_groups:
        raise ValueError(f"batch {batch} is not divisible into {stat_groups} stat groups")
      chunk = batch // stat_groups
      group = self.group_size if 0 < self.group_size < chunk else chunk
      if chunk % group:
        raise ValueError(f"batch {chunk} is not divisible by the norm group size {group}")
      groups = (chunk // group, group, stat_groups)
    if pad_ops == "gather":
      y, mean, var = norm_kernels.norm_act_pad(
        x, scale, bias, groups, self.epsilon, self.dtype, relu, pad, upsample
      )
    else:  # TFLite-friendly padding ops: the plain composition
      y, mean, var = norm_kernels.norm_act_pad_reference(
        x, scale, bias, groups, self.epsilon, self.dtype, relu, 0, 1
      )
      y = padding.reflect_pad(y, pad, upsample, ops=pad_ops)

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
      ra_mean.value = (1 - m) * ra_mean.value + m * jnp.mean(mean.reshape(-1, features), axis=0)
      ra_var.value = (1 - m) * ra_var.value + m * unbiased
    return y


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


class PReLU(nn.Module):
  """Per-channel PReLU (torch nn.PReLU(C), init 0.25), as in sphere20a."""

  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    alpha = self.param("alpha", nn.initializers.constant(0.25), (x.shape[-1],), self.param_dtype)
    return jnp.where(x >= 0, x, alpha.astype(x.dtype) * x)
