"""SphereFace-20a face recogniser and its A-Softmax head (docs/reference.md §5).

A port of `sphere20a` / `AngleLinear` from clcarwin/sphereface_pytorch (as
copied into the original `models/net_sphere.py`). The A-Softmax *loss* is a
pure function in `fit_jax.training.losses`.
"""

import math
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from flax import linen as nn

from fit_jax.models import layers

Dtype = Any

# clcarwin's AngleLinear uses this truncated pi in k = floor(m * theta / pi).
_PI = 3.14159265


def _angle_init(key, shape, dtype=jnp.float32):
  # clcarwin: uniform_(-1, 1).renorm_(2, 1, 1e-5).mul_(1e5), unit columns.
  w = jax.random.uniform(key, shape, jnp.float32, -1.0, 1.0)
  return (w / jnp.linalg.norm(w, axis=0, keepdims=True)).astype(dtype)


class AngleLinear(nn.Module):
  """AngleLinear(in, out, m=4): returns (cos θ·|x|, φ(θ)·|x|).

  The weight is stored (in, out) as the original and renormalised to unit
  columns on every call; φ(θ) = (-1)^k cos(mθ) - 2k with k = floor(mθ/π),
  θ taken from a stop-gradient acos as the original's `cos_theta.data.acos()`.
  """

  num_classes: int
  margin: int = 4
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    if self.margin != 4:
      raise ValueError("only m=4 (sphere20a) is implemented")
    w = self.param("weight", _angle_init, (x.shape[-1], self.num_classes), self.param_dtype).astype(
      jnp.float32
    )
    x = x.astype(jnp.float32)
    # w.renorm(2, 1, 1e-5).mul(1e5): columns scaled to unit norm (torch's
    # renorm divides by norm + 1e-7).
    ww = w / (jnp.linalg.norm(w, axis=0, keepdims=True) + 1e-7)
    xlen = jnp.linalg.norm(x, axis=1, keepdims=True)
    wlen = jnp.linalg.norm(ww, axis=0, keepdims=True)
    cos = jnp.clip(x @ ww / xlen / wlen, -1.0, 1.0)
    cos_m = 8 * cos**4 - 8 * cos**2 + 1  # cos(4θ)
    theta = jnp.arccos(jax.lax.stop_gradient(cos))
    k = jnp.floor(self.margin * theta / _PI)
    sign = 1.0 - 2.0 * jnp.mod(k, 2.0)  # (-1)^k
    phi = sign * cos_m - 2 * k
    return cos * xlen, phi * xlen


class SphereFace20a(nn.Module):
  """sphere20a: 20 3x3 convs with PReLU, fc5 embedding, AngleLinear fc6.

  Attributes:
    num_classes: identities of the fc6 head (10,574 for CASIA-WebFace).
    width: channels of stage 1 (64 in sphere20a; smaller in test configs).
  """

  crop_size: ClassVar[tuple[int, int]] = (112, 96)

  num_classes: int = 10574
  width: int = 64
  embedding_dim: int = 512
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, crops: jax.Array) -> tuple[tuple[jax.Array, jax.Array], jax.Array]:
    """Recognises aligned crops.

    Args:
      crops: [B, 112, 96, 3] aligned BGR crops (alignment.warp_to_crop).

    Returns:
      ((cos [B, C], phi [B, C]), features [B, 512]).
    """
    x = crops.astype(self.dtype)
    for stage, units in enumerate((1, 2, 4, 1), start=1):
      features = self.width * 2 ** (stage - 1)
      x = self._conv_prelu(x, features, 2, f"{stage}_1")
      for u in range(units):
        shortcut = x
        x = self._conv_prelu(x, features, 1, f"{stage}_{2 * u + 2}")
        x = self._conv_prelu(x, features, 1, f"{stage}_{2 * u + 3}")
        x = shortcut + x
    # NHWC flatten; the torch converter permutes fc5 from the CHW order.
    x = x.reshape(x.shape[0], -1)
    features = nn.Dense(
      self.embedding_dim, dtype=self.dtype, param_dtype=self.param_dtype, name="fc5"
    )(x).astype(jnp.float32)
    logits = AngleLinear(self.num_classes, param_dtype=self.param_dtype, name="fc6")(features)
    return logits, features

  def _conv_prelu(self, x, features, stride, suffix):
    fan_in = 9 * x.shape[-1]
    x = layers.Conv(
      features,
      (3, 3),
      strides=(stride, stride),
      padding=((1, 1), (1, 1)),
      add_bias=True,
      # torch's default conv init: kaiming_uniform(a=sqrt(5)).
      kernel_init=nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform"),
      bias_init=_uniform_bias(fan_in),
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      name=f"conv{suffix}",
    )(x)
    return layers.PReLU(self.param_dtype, name=f"prelu{suffix}")(x)


def _uniform_bias(fan_in: int):
  bound = 1 / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init
