"""The face identity transformer G (docs/reference.md, "Generator").

A CycleGAN/Johnson ResNet generator conditioned on a password: the encoded
password z [B, N] is broadcast to N constant image channels and concatenated
after RGB, as the original `ResnetGenerator` with `input_nc = 3 + N`.
Anonymisation is G(x, z); recovery is G(G(x, z), -z).

Topology (ngf = 64, 2 downsamplings, 9 blocks; parameter names in brackets):

  c7s1-64   reflect pad 3, 7x7 conv of 3 + N channels   [conv_in, norm_in]
  d128      reflect pad 1, 3x3 conv stride 2            [down_0, down_norm_0]
  d256                                                  [down_1, down_norm_1]
  R256 x 9  residual blocks                             [block_0 .. block_8]
  u128      nearest x2, reflect pad 1, 3x3 conv + bias  [up_0, up_norm_0]
  u64                                                   [up_1, up_norm_1]
  c7s1-3    reflect pad 3, 7x7 conv + bias, tanh        [conv_out]

Every conv but the last is followed by a norm (layers.Norm) and a ReLU. How
each layer computes, never what, is the layout (models.generator_layout):
the up layers' form (upsampling.py), the RGB layers' (rgb_layers.py), and
whether folded inference keeps the trunk's maps padded.
"""

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from fit_jax.models import generator_layout, layers, padding, resnet_block, rgb_layers, upsampling

Dtype = Any


class Generator(nn.Module):
  """ResnetGenerator(3 + N -> 3, ngf=64, 2 downsamplings, 9 blocks, resize-conv).

  Attributes:
    password_bits: N, the password length.
    ngf: filters of the first layer.
    num_downsampling: stride-2 layers (and as many up layers).
    num_blocks: residual blocks at the lowest resolution.
    norm: `batch_stats` (reference), `batch`, `instance` or `folded`; see
      layers.Norm.
    norm_group_size: images per batch-statistics group (0: whole batch).

  Layout (the same function of the same parameters under every value;
  models.build_models and inference.load_generator take the backend's entry
  of generator_layout unless a config names them):
    upsample: `resize_conv` (the reference's ops) or `phase_2x2` (one 2x2
      convolution of the low-resolution map); see upsampling.py.
    reflect_pad_ops: `gather` (one pass per padding) or `concatenate`
      (jnp.pad's ops, for TFLite); see padding.reflect_pad.
    rgb_conv, rgb_block: the 7x7 RGB layers as a plain convolution (`conv`)
      or on rgb_block x rgb_block pixel blocks (`space_to_depth`); see
      rgb_layers.py.
    folded_trunk_padding: folded inference pads each down and residual
      convolution's input (`per_conv`) or keeps those maps padded and
      rewrites their 1-pixel border (`border`: padding.rewrite_border; the
      last block edge-pads for a phase up layer). Training always pads per
      convolution.
  """

  password_bits: int = 16
  ngf: int = 64
  num_downsampling: int = 2
  num_blocks: int = 9
  norm: str = "batch_stats"
  norm_group_size: int = 0
  upsample: str = "resize_conv"
  reflect_pad_ops: str = "gather"
  rgb_conv: str = "conv"
  rgb_block: int = 2
  folded_trunk_padding: str = "per_conv"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(
    self, images: jax.Array, password: jax.Array, train: bool, stat_groups: int = 1
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
    self._check(images, password)
    nd, phase_up = self.num_downsampling, self.upsample == "phase_2x2"
    # Each ReLU'd norm also applies the padding (and upsampling) its next
    # layer wants: (pad, upsample) below. Folded with trunk padding
    # `border`, the down layers and blocks keep their maps padded.
    padded_trunk = (
      self.norm == "folded" and self.folded_trunk_padding == "border" and self.num_blocks > 0
    )
    up_input = (0, 1) if phase_up else (1, 2)
    trunk_output = up_input if nd else (3, 1)

    def down_input(i):  # what the output of down layer i (-1: norm_in) feeds
      if padded_trunk:
        return (1, 1) if i < 0 else (0, 1)  # a down layer pads its own output
      if i + 1 < nd:
        return (1, 1)
      return (0, 1) if self.num_blocks else trunk_output

    # c7s1-ngf: RGB and the password's constant channels.
    kernel = self.param(
      "conv_in", layers.conv_init, (7, 7, 3 + self.password_bits, self.ngf), self.param_dtype
    )
    x = rgb_layers.input_conv(
      images, password, kernel, self.rgb_conv, self.rgb_block, self.reflect_pad_ops, self.dtype
    )
    x, padded = self._norm_relu("norm_in", x, train, stat_groups, down_input(-1))

    # d(2 ngf), d(4 ngf), ...: stride-2 3x3 convolutions.
    features = self.ngf
    for i in range(nd):
      features *= 2
      x = nn.Conv(
        features,
        (3, 3),
        strides=(2, 2),
        # Padded maps: 2 more zero pixels on each side make the output one
        # pixel larger on each side, its border, rewritten after the norm.
        padding=((2, 2), (2, 2)) if padded_trunk else "VALID",
        use_bias=False,
        kernel_init=layers.conv_init,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        name=f"down_{i}",
      )(x if padded else padding.reflect_pad(x, 1, ops=self.reflect_pad_ops))
      x, padded = self._norm_relu(f"down_norm_{i}", x, train, stat_groups, down_input(i))
      if padded_trunk:
        x, padded = padding.rewrite_border(x, 1), True

    # R(4 ngf) x num_blocks. The last one's border is what the next layer
    # wants: edge replication for a phase up layer.
    trunk_border = "edge" if nd and phase_up else "reflect"
    for i in range(self.num_blocks):
      x = resnet_block.ResnetBlock(
        self.norm,
        self.norm_group_size,
        self.reflect_pad_ops,
        padded_trunk,
        border=trunk_border if i + 1 == self.num_blocks else "reflect",
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        name=f"block_{i}",
      )(x, train, stat_groups)
      padded = False
    edge_padded = padded_trunk and trunk_border == "edge"
    if padded_trunk and not edge_padded:
      x = x[:, 1:-1, 1:-1]

    # u(2 ngf), u(ngf), ...: x2 resize-convolutions that, unlike the other
    # convolutions, keep their bias.
    for i in range(nd):
      features //= 2
      conv = layers.Conv(
        features,
        (3, 3),
        padding="VALID",
        # Folded, the resize-convolution's bias is carried by its norm's
        # (fit_jax.deploy.inference); a phase layer adds its own before the
        # depth-to-space, where XLA fuses it into the cuDNN call.
        add_bias=self.norm != "folded" or phase_up,
        kernel_init=layers.conv_init,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        name=f"up_{i}",
      )
      if phase_up:
        x = upsampling.phase_2x2(conv, x, self.dtype, self.reflect_pad_ops, edge_padded and i == 0)
      else:
        x = upsampling.resize_conv(conv, x, padded, self.reflect_pad_ops)
      wanted = up_input if i + 1 < nd else (3, 1)
      if self.norm == "folded" and phase_up:
        # Folded, this norm is all in the convolution's bias
        # (inference.fold_batch_norm): only the ReLU and padding are left.
        x = padding.reflect_pad(nn.relu(x), *wanted, ops=self.reflect_pad_ops)
        padded = wanted[0] > 0
      else:
        x, padded = self._norm_relu(f"up_norm_{i}", x, train, stat_groups, wanted)

    # c7s1-3, then tanh. No global skip connection: the output is the tanh.
    x = rgb_layers.OutputConv(
      self.rgb_conv,
      self.rgb_block,
      self.reflect_pad_ops,
      self.dtype,
      self.param_dtype,
      name="conv_out",
    )(x, padded)
    return jnp.tanh(x.astype(jnp.float32))

  def _norm_relu(self, name, x, train, stat_groups, pad_upsample):
    """norm, ReLU and the next layer's (pad, upsample); and whether x is now padded."""
    pad, upsample = pad_upsample
    y = layers.Norm(
      self.norm, self.norm_group_size, dtype=self.dtype, param_dtype=self.param_dtype, name=name
    )(x, train, stat_groups, relu=True, pad=pad, upsample=upsample, pad_ops=self.reflect_pad_ops)
    return y, pad > 0

  def _check(self, images: jax.Array, password: jax.Array) -> None:
    generator_layout.check(generator_layout.of(self))
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f"images must be [B, H, W, 3]; got {images.shape}")
    n = self.password_bits
    if password.shape != (images.shape[0], n):
      raise ValueError(
        f"password must be [B, {n}] (encoded bits) for B={images.shape[0]}; got {password.shape}"
      )
