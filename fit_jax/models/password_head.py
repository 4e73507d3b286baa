"""The password predictor Q (docs/reference.md §4, `MultiClassifier`).

An infoGAN-style auxiliary classifier: from a pair of images concatenated on
channels it predicts the password that turns the first into the second, as
N/4 hexadecimal digits (classes 0..15, most significant group first).
"""

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from fit_jax.models import layers

Dtype = Any


class PasswordHead(nn.Module):
  """NLayerFrontEnd (3 convs) + MultiClassifierAfterFE (2 convs, pool, heads).

  The reference's N/4 separate Linear(512 -> 16) heads are stored as one
  Dense(512 -> 16 * N/4) whose output is split per digit: the same maths and
  parameter count, one matmul instead of N/4.
  """

  password_bits: int = 16
  ndf: int = 64
  norm: str = "batch_stats"
  norm_group_size: int = 0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(
    self, first: jax.Array, second: jax.Array, train: bool, stat_groups: int = 1
  ) -> jax.Array:
    """Digit logits of the password mapping `first` to `second`.

    Args:
      first, second: [B, 128, 128, 3] in [-1, 1] (any size >= 64).
      train: whether batch statistics are updated (mode `batch`).

    Returns:
      [B, N/4, 16] logits, float32.
    """
    if self.password_bits % 4:
      raise ValueError(f"password_bits={self.password_bits} is not a multiple of 4")
    x = jnp.concatenate([first, second], axis=-1).astype(self.dtype)
    # (features, kernel, stride, padding) of the trunk and of the head convs.
    specs = [
      (self.ndf, 4, 2, 1),
      (self.ndf * 2, 4, 2, 1),
      (self.ndf * 4, 4, 2, 1),
      (self.ndf * 8, 4, 2, 1),
      (self.ndf * 8, 4, 4, 0),
    ]
    for i, (features, k, s, p) in enumerate(specs):
      x = layers.Conv(
        features,
        (k, k),
        strides=(s, s),
        padding=((p, p), (p, p)),
        add_bias=(i == 0),
        kernel_init=layers.conv_init,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        name=f"conv_{i}",
      )(x)
      if i > 0:
        x = layers.Norm(
          self.norm,
          self.norm_group_size,
          dtype=self.dtype,
          param_dtype=self.param_dtype,
          name=f"norm_{i}",
        )(x, train, stat_groups)
      x = nn.leaky_relu(x, 0.2)
    # AvgPool2d(2) of the 2x2 map at 128x128; a global mean generalises it to
    # the smaller images of the test configs.
    x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    groups = self.password_bits // 4
    logits = nn.Dense(
      16 * groups,
      kernel_init=layers.conv_init,
      dtype=jnp.float32,
      param_dtype=self.param_dtype,
      name="heads",
    )(x)
    return logits.reshape(x.shape[0], groups, 16)
