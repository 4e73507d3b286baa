"""The face identity transformer G (REFERENCE §1).

A CycleGAN/Johnson ResNet generator conditioned on a password: the encoded
password z [B, N] is broadcast to N constant image channels and concatenated
after RGB, as the original `ResnetGenerator` with `input_nc = 3 + N`.
Anonymisation is G(x, z); recovery is G(G(x, z), -z).
"""

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from fit_jax.models import layers

Dtype = Any


class ResnetBlock(nn.Module):
  """reflect-pad, conv3x3, norm, ReLU, reflect-pad, conv3x3, norm, + identity."""

  norm: str
  norm_group_size: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool, stat_groups: int = 1) -> jax.Array:
    y = x
    for i in range(2):
      y = nn.Conv(
        x.shape[-1], (3, 3), padding="VALID", use_bias=False,
        kernel_init=layers.conv_init, dtype=self.dtype,
        param_dtype=self.param_dtype, name=f"conv_{i}",
      )(layers.reflect_pad(y, 1))
      y = layers.Norm(
        self.norm, self.norm_group_size, dtype=self.dtype,
        param_dtype=self.param_dtype, name=f"norm_{i}",
      )(y, train, stat_groups)
      if i == 0:
        y = nn.relu(y)
    # No activation after the addition, as the original ResnetBlock.
    return x + y


class Generator(nn.Module):
  """ResnetGenerator(19 -> 3, ngf=64, 2 downsamplings, 9 blocks, resize-conv).

  Attributes:
    password_bits: N, the password length.
    ngf: filters of the first layer.
    num_blocks: residual blocks at the lowest resolution.
    norm: `batch_stats` (reference), `batch` or `instance`; see layers.Norm.
    norm_group_size: images per batch-statistics group (0: whole batch).
  """

  password_bits: int = 16
  ngf: int = 64
  num_downsampling: int = 2
  num_blocks: int = 9
  norm: str = "batch_stats"
  norm_group_size: int = 0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def _norm(self, name):
    return layers.Norm(
      self.norm, self.norm_group_size, dtype=self.dtype,
      param_dtype=self.param_dtype, name=name,
    )

  @nn.compact
  def __call__(
    self, images: jax.Array, password: jax.Array, train: bool,
    stat_groups: int = 1,
  ) -> jax.Array:
    """Transforms images under a password.

    Args:
      images: [B, H, W, 3] in [-1, 1].
      password: [B, N] encoded password (bits - 0.5, see passwords.encode).
      train: whether batch statistics are updated (mode `batch`).
      stat_groups: equal batch chunks normalised separately (see
        layers.Norm): G on concatenated inputs equals G on each.

    Returns:
      [B, H, W, 3] in [-1, 1] (tanh), float32.
    """
    n = self.password_bits
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f"images must be [B, H, W, 3]; got {images.shape}")
    if password.shape != (images.shape[0], n):
      raise ValueError(
        f"password must be [B, {n}] (encoded bits) for B={images.shape[0]}; "
        f"got {password.shape}"
      )
    kernel = self.param(
      "conv_in", layers.conv_init, (7, 7, 3 + n, self.ngf), self.param_dtype
    )
    # The password channels are constant over the image and reflect padding
    # keeps them constant, so their share of the 7x7 convolution is exactly a
    # per-image bias z @ sum_{kh,kw} W[..., 3:, :]. This replaces 16 of the 19
    # input channels with a matmul; the parameter keeps the reference shape.
    x = jax.lax.conv_general_dilated(
      layers.reflect_pad(images.astype(self.dtype), 3),
      kernel[:, :, :3].astype(self.dtype),
      window_strides=(1, 1), padding="VALID",
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    password_bias = jnp.dot(
      password.astype(jnp.float32),
      jnp.sum(kernel[:, :, 3:].astype(jnp.float32), axis=(0, 1)),
    )
    x = x + password_bias[:, None, None, :].astype(self.dtype)
    x = nn.relu(self._norm("norm_in")(x, train, stat_groups))

    features = self.ngf
    for i in range(self.num_downsampling):
      features *= 2
      x = nn.Conv(
        features, (3, 3), strides=(2, 2), padding="VALID", use_bias=False,
        kernel_init=layers.conv_init, dtype=self.dtype,
        param_dtype=self.param_dtype, name=f"down_{i}",
      )(layers.reflect_pad(x, 1))
      x = nn.relu(self._norm(f"down_norm_{i}")(x, train, stat_groups))

    for i in range(self.num_blocks):
      x = ResnetBlock(
        self.norm, self.norm_group_size, dtype=self.dtype,
        param_dtype=self.param_dtype, name=f"block_{i}",
      )(x, train, stat_groups)

    for i in range(self.num_downsampling):
      features //= 2
      # Resize-convolution (`use_resize_conv: True`): nearest x2, then a 3x3
      # convolution that, unlike the others, keeps its bias.
      b, h, w, c = x.shape
      x = jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, 2, w, 2, c))
      x = x.reshape(b, 2 * h, 2 * w, c)
      x = nn.Conv(
        features, (3, 3), padding="VALID", use_bias=True,
        kernel_init=layers.conv_init, dtype=self.dtype,
        param_dtype=self.param_dtype, name=f"up_{i}",
      )(layers.reflect_pad(x, 1))
      x = nn.relu(self._norm(f"up_norm_{i}")(x, train, stat_groups))

    x = nn.Conv(
      3, (7, 7), padding="VALID", use_bias=True, kernel_init=layers.conv_init,
      dtype=self.dtype, param_dtype=self.param_dtype, name="conv_out",
    )(layers.reflect_pad(x, 3))
    # No global skip connection: the output is the tanh itself.
    return jnp.tanh(x.astype(jnp.float32))
