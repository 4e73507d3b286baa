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

from fit_jax.models import few_channel_conv, layers

Dtype = Any

UPSAMPLE_MODES = ("resize_conv", "subpixel", "transposed", "phase", "phase_2x2")
RGB_CONV_MODES = ("conv", "matmul", "space_to_depth")
# Upsampling modes that add the up-convolution's bias themselves, before the
# depth-to-space (folded, it carries the whole up-norm: fit_jax.inference).
PHASE_MODES = ("phase", "phase_2x2")
TRUNK_PADDING_MODES = ("per_conv", "border")


class ResnetBlock(nn.Module):
  """reflect-pad, conv3x3, norm, ReLU, reflect-pad, conv3x3, norm, + identity.

  `padded` (folded norms only): x arrives reflect-padded by one pixel and the
  output leaves padded by one pixel too, by `border` (layers.BORDER_MODES:
  the last block pads as the next layer wants); see
  Generator.folded_trunk_padding.
  """

  norm: str
  norm_group_size: int
  reflect_pad_ops: str = "gather"
  padded: bool = False
  border: str = "reflect"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool, stat_groups: int = 1) -> jax.Array:
    if self.padded:
      return self._padded(x, train)
    y = layers.reflect_pad(x, 1, ops=self.reflect_pad_ops)
    for i in range(2):
      y = self._conv(i, x.shape[-1], "VALID")(y)
      # The first norm's ReLU and the second conv's padding in one op (its
      # gradient in two passes, layers.norm_act_pad).
      y = self._norm(i)(y, train, stat_groups, relu=i == 0, pad=1 - i,
                        pad_ops=self.reflect_pad_ops)
    # No activation after the addition, as the original ResnetBlock.
    return x + y

  def _conv(self, i: int, features: int, padding) -> nn.Conv:
    return nn.Conv(
      features, (3, 3), padding=padding, use_bias=False,
      kernel_init=layers.conv_init, dtype=self.dtype,
      param_dtype=self.param_dtype, name=f"conv_{i}",
    )

  def _norm(self, i: int) -> layers.Norm:
    return layers.Norm(
      self.norm, self.norm_group_size, dtype=self.dtype,
      param_dtype=self.param_dtype, name=f"norm_{i}",
    )

  def _padded(self, x: jax.Array, train: bool) -> jax.Array:
    """The same block on maps that keep their reflect padding: each
    convolution runs over the whole padded map with zero padding (exact
    inside, garbage on the border), and the border is rewritten from the
    interior after the ReLU and after the residual addition."""
    if self.norm != "folded":
      raise ValueError(f"a padded residual block needs folded norms; got {self.norm!r}")
    y = x
    for i in range(2):
      y = self._conv(i, x.shape[-1], ((1, 1), (1, 1)))(y)
      y = self._norm(i)(y, train, relu=i == 0)
      if i == 0:
        y = layers.rewrite_border(y, 1)
    return layers.rewrite_border(x + y, 1, self.border)


class Generator(nn.Module):
  """ResnetGenerator(19 -> 3, ngf=64, 2 downsamplings, 9 blocks, resize-conv).

  Attributes:
    password_bits: N, the password length.
    ngf: filters of the first layer.
    num_blocks: residual blocks at the lowest resolution.
    norm: `batch_stats` (reference), `batch` or `instance`; see layers.Norm.
    norm_group_size: images per batch-statistics group (0: whole batch).
    upsample: `resize_conv` (the reference's order: nearest x2, reflect pad,
      3x3 conv) or `subpixel` (the same function and parameters computed as
      four 2x2 convolutions on the low-resolution map, 2.25x fewer FLOPs in
      these layers; see _subpixel_resize_conv) or `transposed` (the same
      again as one stride-2 transposed convolution with a 4x4 kernel made
      from the 3x3 one: no x2 map and no interleave; see
      _transposed_resize_conv). On an H200, both measured slower than
      resize_conv (benchmarks/README.md). Or `phase`: one 3x3 convolution of
      the low-resolution map with the four output phases as channels, and a
      depth-to-space (the same MACs as resize_conv, without the x2 input map;
      see _phase_resize_conv). Or `phase_2x2`: the same with 2x2 kernels,
      each phase a shifted window of the output (0.47x the MACs of these
      layers at 32x32; see _phase_2x2_resize_conv). Neither measured on a
      GPU yet.
    reflect_pad_ops: `gather` (one pass over memory per padding) or
      `concatenate` (jnp.pad's ops, for TFLite export); see
      layers.reflect_pad. The same values either way.
    rgb_conv: how the 7x7 convolutions from and to RGB are computed:
      `conv` (lax.conv, as the other layers), `matmul` (one dense matmul
      each plus a memory pass) or `space_to_depth` (a convolution on 2x2
      pixel blocks: 12 channels instead of 3); see few_channel_conv. The
      same function of the same parameters; on an H200, `matmul` measured
      slower.
    rgb_block: with rgb_conv `space_to_depth`, the block side: 2 (3 RGB
      channels become 12, 1.31x the MACs) or 4 (48 channels and the 64-wide
      side 1024, at a quarter of the resolution: the shapes of the residual
      blocks' convolutions, for 2.94x the MACs of these small layers).
    rgb_channels: with rgb_conv `conv`, the channels those convolutions
      compute with: 3, or more with zero-filled images and kernels (the same
      values; cuDNN's fastest kernels want channel counts that are multiples
      of 8). Parameters keep their shapes.
    folded_trunk_padding: how folded inference (norm `folded`) pads the
      down layers' and residual blocks' convolutions: `per_conv` (a reflect
      padding of each input, one pass over the map) or `border` (their maps
      stay padded: each down convolution computes its output with a 1-pixel
      border, from 2 pixels of zero padding, each residual convolution runs
      over the padded map with zero padding, 6-13 % more outputs, and one
      gather and one in-place scatter rewrite the border; see
      layers.rewrite_border. The last block pads its output as a phase
      up-layer wants it, by edge replication). The same values. Other norms
      (training) always pad per convolution.

  The layout options (upsample through folded_trunk_padding) default to the
  reference's ops; models.build_models and inference.load_generator set them
  from the backend's entry in generator_layout unless a config names them.
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
  rgb_channels: int = 3
  rgb_block: int = 2
  folded_trunk_padding: str = "per_conv"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def _pad(self, x, pad, upsample=1):
    return layers.reflect_pad(x, pad, upsample, ops=self.reflect_pad_ops)

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
    if self.upsample not in UPSAMPLE_MODES:
      raise ValueError(f"upsample {self.upsample!r} is not one of {UPSAMPLE_MODES}")
    if self.rgb_conv not in RGB_CONV_MODES:
      raise ValueError(f"rgb_conv {self.rgb_conv!r} is not one of {RGB_CONV_MODES}")
    if self.rgb_channels < 3:
      raise ValueError(f"rgb_channels must be at least 3; got {self.rgb_channels}")
    if self.rgb_channels != 3 and self.rgb_conv != "conv":
      raise ValueError(
        f"rgb_channels={self.rgb_channels} needs rgb_conv 'conv'; got {self.rgb_conv!r}")
    if self.rgb_block < 1:
      raise ValueError(f"rgb_block must be at least 1; got {self.rgb_block}")
    if self.folded_trunk_padding not in TRUNK_PADDING_MODES:
      raise ValueError(f"folded_trunk_padding {self.folded_trunk_padding!r} is not one of "
                       f"{TRUNK_PADDING_MODES}")
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
    rgb_kernel = kernel[:, :, :3].astype(self.dtype)
    if self.rgb_conv == "matmul":
      x = few_channel_conv.conv_by_patches(
        images.astype(self.dtype), rgb_kernel, 3, self.reflect_pad_ops)
    elif self.rgb_conv == "space_to_depth":
      x = few_channel_conv.conv_space_to_depth(
        images.astype(self.dtype), rgb_kernel, 3, self.reflect_pad_ops, self.rgb_block)
    else:
      # Zero channels after RGB (rgb_channels), in the images and the kernel.
      extra = self.rgb_channels - 3
      x = jax.lax.conv_general_dilated(
        self._pad(jnp.pad(images.astype(self.dtype), ((0, 0),) * 3 + ((0, extra),)), 3),
        jnp.pad(rgb_kernel, ((0, 0), (0, 0), (0, extra), (0, 0))),
        window_strides=(1, 1), padding="VALID",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
      )
    password_bias = jnp.dot(
      password.astype(jnp.float32),
      jnp.sum(kernel[:, :, 3:].astype(jnp.float32), axis=(0, 1)),
    )
    # Added in float32, as the normalisation computes anyway: in bfloat16,
    # XLA on GPU would make this per-image bias a full-size side input of the
    # cuDNN call (a materialised broadcast, two extra passes over the map).
    x = x.astype(jnp.float32) + password_bias[:, None, None, :]
    # Each ReLU'd norm also applies the padding (and upsampling) its next
    # layer wants, so its gradient takes two passes (layers.norm_act_pad);
    # `padded` says x already has it.
    nd = self.num_downsampling
    out_pad = 3 if self.rgb_conv in ("conv", "space_to_depth") else 0
    up_pad = (1, 2) if self.upsample == "resize_conv" else (0, 1)
    # What the layer after the residual blocks wants: an up layer's input,
    # or the output layer's.
    after_trunk = up_pad if nd else (out_pad, 1)

    def norm_relu(name, x, pad_upsample):
      pad, upsample = pad_upsample
      y = self._norm(name)(x, train, stat_groups, relu=True, pad=pad,
                           upsample=upsample, pad_ops=self.reflect_pad_ops)
      return y, pad > 0

    # Folded, the down layers and residual blocks may keep their maps padded
    # (see the docstring): norm_in then pads once, for the first down layer
    # (or the first block), and each down layer writes its own border.
    padded_trunk = (self.norm == "folded" and self.folded_trunk_padding == "border"
                    and self.num_blocks > 0)
    # The last block's border: edge replication is the padding a phase
    # up-layer wants (no slice and padding pass between them).
    trunk_border = "edge" if nd and self.upsample in PHASE_MODES else "reflect"

    def after_down(i):  # what the output of down layer i (-1: norm_in) feeds
      if padded_trunk:
        return (1, 1) if i < 0 else (0, 1)  # the down layer pads itself
      if i + 1 < nd:
        return (1, 1)
      if self.num_blocks:
        return (0, 1)
      return after_trunk

    x, padded = norm_relu("norm_in", x, after_down(-1))

    features = self.ngf
    for i in range(nd):
      features *= 2
      x = nn.Conv(
        features, (3, 3), strides=(2, 2),
        # Padded maps: 2 more zero pixels on each side make the output one
        # pixel larger on each side, its border, rewritten after the norm
        # (the interior reads exactly the padded input's pixels).
        padding=((2, 2), (2, 2)) if padded_trunk else "VALID", use_bias=False,
        kernel_init=layers.conv_init, dtype=self.dtype,
        param_dtype=self.param_dtype, name=f"down_{i}",
      )(x if padded else self._pad(x, 1))
      x, padded = norm_relu(f"down_norm_{i}", x, after_down(i))
      if padded_trunk:
        x, padded = layers.rewrite_border(x, 1), True

    for i in range(self.num_blocks):
      x = ResnetBlock(
        self.norm, self.norm_group_size, self.reflect_pad_ops, padded_trunk,
        border=trunk_border if i + 1 == self.num_blocks else "reflect",
        dtype=self.dtype, param_dtype=self.param_dtype, name=f"block_{i}",
      )(x, train, stat_groups)
      padded = False
    # Edge-padded for a phase up-layer (the blocks' last border), or not.
    edge_padded = padded_trunk and trunk_border == "edge"
    if padded_trunk and not edge_padded:
      x = x[:, 1:-1, 1:-1]

    for i in range(nd):
      features //= 2
      # Resize-convolution (`use_resize_conv: True`): nearest x2, then a 3x3
      # convolution that, unlike the others, keeps its bias. Folded models
      # carry it in the norm's bias (fit_jax.inference): one bias per
      # output channel is what XLA fuses into the cuDNN call.
      conv = layers.Conv(
        features, (3, 3), padding="VALID",
        # The phase modes keep their bias when folded (they add it before
        # the depth-to-space, where XLA fuses it into the cuDNN call).
        add_bias=self.norm != "folded" or self.upsample in PHASE_MODES,
        kernel_init=layers.conv_init, dtype=self.dtype,
        param_dtype=self.param_dtype, name=f"up_{i}",
      )
      if self.upsample == "subpixel":
        x = _subpixel_resize_conv(conv, x, self.dtype)
      elif self.upsample == "transposed":
        x = _transposed_resize_conv(conv, x, self.dtype)
      elif self.upsample == "phase":
        x = _phase_resize_conv(conv, x, self.dtype, self.reflect_pad_ops,
                               edge_padded and i == 0)
      elif self.upsample == "phase_2x2":
        x = _phase_2x2_resize_conv(conv, x, self.dtype, self.reflect_pad_ops,
                                   edge_padded and i == 0)
      else:
        x = conv(x if padded else self._pad(x, 1, upsample=2))
      wanted = up_pad if i + 1 < nd else (out_pad, 1)
      if self.norm == "folded" and self.upsample in PHASE_MODES:
        # Folded, this norm is all in the convolution's bias
        # (inference.fold_batch_norm): only the ReLU and padding are left.
        x = layers.reflect_pad(nn.relu(x), *wanted, ops=self.reflect_pad_ops)
        padded = wanted[0] > 0
      else:
        x, padded = norm_relu(f"up_norm_{i}", x, wanted)

    x = _OutputConv(
      self.rgb_conv, self.rgb_channels, self.rgb_block, self.reflect_pad_ops,
      self.dtype, self.param_dtype, name="conv_out",
    )(x, padded)
    # No global skip connection: the output is the tanh itself.
    return jnp.tanh(x.astype(jnp.float32))


class _OutputConv(nn.Module):
  """Reflect pad 3, then nn.Conv(3, (7, 7)) with its parameters.

  With `rgb_conv="conv"` it computes `channels` outputs, of which the ones
  past the third have zero kernels and are dropped.
  """

  rgb_conv: str
  channels: int
  block: int
  reflect_pad_ops: str
  dtype: Dtype
  param_dtype: Dtype

  @nn.compact
  def __call__(self, x: jax.Array, padded: bool = False) -> jax.Array:
    """x: [B, H, W, C], or already reflect-padded by 3 if `padded` (rgb_conv
    `conv` or `space_to_depth`)."""
    kernel = self.param(
      "kernel", layers.conv_init, (7, 7, x.shape[-1], 3), self.param_dtype)
    bias = self.param("bias", nn.initializers.zeros, (3,), self.param_dtype)
    if self.rgb_conv == "matmul":
      if padded:
        raise ValueError("rgb_conv 'matmul' pads the tap products, not its input")
      y = few_channel_conv.conv_by_tap_products(
        x.astype(self.dtype), kernel.astype(self.dtype), 3, self.reflect_pad_ops)
      return y + bias.astype(jnp.float32)
    if self.rgb_conv == "space_to_depth":
      y = few_channel_conv.conv_space_to_depth(
        x.astype(self.dtype), kernel.astype(self.dtype), 3, self.reflect_pad_ops, self.block,
        padded=padded)
      return layers.bias_add(y, bias)
    extra = self.channels - 3
    if not padded:
      x = layers.reflect_pad(x, 3, ops=self.reflect_pad_ops)
    y = jax.lax.conv_general_dilated(
      x.astype(self.dtype),
      jnp.pad(kernel.astype(self.dtype), ((0, 0),) * 3 + ((0, extra),)),
      window_strides=(1, 1), padding="VALID",
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    # lax.slice: jnp indexing can become a gather under the export's
    # symbolic batch size, and TFLite has no gather builtin for that.
    return layers.bias_add(jax.lax.slice_in_dim(y, 0, 3, axis=3), bias)


def _transposed_resize_conv(conv: layers.Conv, x: jax.Array, dtype) -> jax.Array:
  """conv(reflect_pad(nearest_x2(x), 1)) as one transposed convolution.

  As in _subpixel_resize_conv, the x2 map's reflect padding is x's edge
  padding, and output pixel 2i + a reads rows i + a and i + a + 1 of the
  edge-padded x with taps (K0, K1 + K2) for a = 0 and (K0 + K1, K2) for
  a = 1, per axis. In the edge-padded x dilated by 2 (a zero between
  pixels), the 4-tap window starting at output row o covers exactly those
  two rows, at taps 0 and 2 (o even) or 1 and 3 (o odd), so one 4x4 kernel
  [K0, K0 + K1, K1 + K2, K2] (per axis) computes every phase. That is the
  transposed convolution of a stride-2 convolution, which cuDNN runs as its
  backward-data kernel without the zeros: 16 MACs per input channel and
  low-resolution pixel, as the four 2x2 convolutions, in one kernel reading
  the small map. XLA recognises it only in the form autodiff produces (a
  reversed kernel), hence conv_transpose(transpose_kernel=True) of the
  kernel built in reverse order: the same 4x4 kernel after its reversal.
  """
  c = x.shape[-1]
  # Create (or fetch) the conv's parameters through the module itself.
  conv(jnp.zeros((1, 3, 3, c), x.dtype))
  kernel = conv.variables["params"]["kernel"].astype(dtype)

  def widen_reversed(k, axis):  # 3 taps -> [K2, K1 + K2, K0 + K1, K0]
    k0, k1, k2 = (jnp.take(k, i, axis=axis) for i in range(3))
    return jnp.stack([k2, k1 + k2, k0 + k1, k0], axis=axis)

  # transpose_kernel swaps the kernel's in and out axes back, too.
  forward_kernel = jnp.swapaxes(widen_reversed(widen_reversed(kernel, 0), 1), 2, 3)
  padded = jnp.pad(x.astype(dtype), ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
  out = jax.lax.conv_transpose(
    padded, forward_kernel, strides=(2, 2), padding=((0, 0), (0, 0)),
    dimension_numbers=("NHWC", "HWIO", "NHWC"), transpose_kernel=True)
  if "bias" in conv.variables["params"]:
    out = layers.bias_add(out, conv.variables["params"]["bias"])
  return out


def _phase_resize_conv(conv: layers.Conv, x: jax.Array, dtype, pad_ops: str,
                       edge_padded: bool = False) -> jax.Array:
  """conv(reflect_pad(nearest_x2(x), 1)) as one convolution of x.

  As in _subpixel_resize_conv, output pixel 2i + a reads, per axis, rows
  i - 1, i, i + 1 of x edge-padded by one with taps [K0, K1 + K2, 0] (a = 0)
  or [0, K0 + K1, K2] (a = 1). The four phases' 3x3 kernels stacked on the
  output axis make one 3x3 convolution of the low-resolution map with
  4 x Cout outputs, (a, b, channel) at each pixel, and a depth-to-space
  gives the x2 output: the same MACs as the resize-convolution, with no x2
  input map written and read (XLA fuses the depth-to-space into the next
  padding gather; static H200 program in benchmarks/README.md). The bias is
  added before the depth-to-space, tiled over the phases, so that it is a
  per-channel bias of the cuDNN call. `edge_padded`: x arrives edge-padded.
  """
  b, h, w, c = x.shape
  if edge_padded:
    h, w = h - 2, w - 2
  # Create (or fetch) the conv's parameters through the module itself.
  conv(jnp.zeros((1, 3, 3, c), x.dtype))
  kernel = conv.variables["params"]["kernel"].astype(dtype)

  def phases(k, axis):  # 3 taps -> ([K0, K1 + K2, 0], [0, K0 + K1, K2])
    k0, k1, k2 = (jnp.take(k, i, axis=axis) for i in range(3))
    zero = jnp.zeros_like(k0)
    return (jnp.stack([k0, k1 + k2, zero], axis=axis),
            jnp.stack([zero, k0 + k1, k2], axis=axis))

  cout = kernel.shape[3]
  stacked = jnp.stack(
    [jnp.stack(phases(rows, 1), axis=3) for rows in phases(kernel, 0)], axis=3,
  ).reshape(3, 3, c, 4 * cout)  # output channel (a * 2 + b) * Cout + o
  xp = x.astype(dtype) if edge_padded else layers.edge_pad(x.astype(dtype), 1, ops=pad_ops)
  y = jax.lax.conv_general_dilated(
    xp, stacked, (1, 1), "VALID",
    dimension_numbers=("NHWC", "HWIO", "NHWC"))
  if "bias" in conv.variables["params"]:
    y = layers.bias_add(y, jnp.tile(conv.variables["params"]["bias"], 4))
  y = y.reshape(b, h, w, 2, 2, cout)
  return jnp.transpose(y, (0, 1, 3, 2, 4, 5)).reshape(b, 2 * h, 2 * w, cout)


def _phase_2x2_resize_conv(conv: layers.Conv, x: jax.Array, dtype, pad_ops: str,
                           edge_padded: bool = False) -> jax.Array:
  """conv(reflect_pad(nearest_x2(x), 1)) as one 2x2 convolution of x.

  Per axis, output pixel 2i + a reads two rows of x edge-padded by one (xp):
  xp[i], xp[i + 1] with taps (K0, K1 + K2) for a = 0, and xp[i + 1],
  xp[i + 2] with taps (K0 + K1, K2) for a = 1 (see _subpixel_resize_conv).
  So one 2x2 VALID convolution of xp with the four phases' kernels stacked
  on the output axis, evaluated at the (H + 1) x (W + 1) positions, holds
  phase (a, b) of output pixel (2i + a, 2j + b) in channel group (a, b) at
  position (i + a, j + b). Against _phase_resize_conv (3x3 kernels, zero
  taps included): 16 (H + 1)(W + 1) / (36 H W) of the MACs, 0.47x at 32x32,
  with the same single cuDNN call per layer and no x2 input map. The
  shifted windows and the depth-to-space are pads and reshapes that XLA:GPU
  fuses into the next padding gather (_phase_windows_shifted), on TPU
  stacked slices (_phase_windows_stacked: its pads and reshapes became
  relayout copies there). The tap sums are taken in the parameters' float32
  and rounded once to the compute dtype. `edge_padded`: x arrives as xp.
  """
  b, h, w, c = x.shape
  if edge_padded:
    h, w = h - 2, w - 2
  # Create (or fetch) the conv's parameters through the module itself.
  conv(jnp.zeros((1, 3, 3, c), x.dtype))
  kernel = conv.variables["params"]["kernel"]

  def taps(k, axis):  # 3 taps -> (K0, K1 + K2) for phase 0, (K0 + K1, K2) for 1
    k0, k1, k2 = (jnp.take(k, i, axis=axis) for i in range(3))
    return jnp.stack([k0, k1 + k2], axis=axis), jnp.stack([k0 + k1, k2], axis=axis)

  cout = kernel.shape[3]
  stacked = jnp.stack(
    [jnp.stack(taps(rows, 1), axis=3) for rows in taps(kernel, 0)], axis=3,
  ).reshape(2, 2, c, 4 * cout)  # output channel (a * 2 + b) * Cout + o
  xp = x.astype(dtype) if edge_padded else layers.edge_pad(x.astype(dtype), 1, ops=pad_ops)
  y = jax.lax.conv_general_dilated(
    xp, stacked.astype(dtype), (1, 1),
    "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))  # [B, H + 1, W + 1, 4 Cout]
  if "bias" in conv.variables["params"]:
    y = layers.bias_add(y, jnp.tile(conv.variables["params"]["bias"], 4))

  # out[:, 2i + a, 2j + b] = y[:, i + a, j + b, group (a, b)].
  return jax.lax.platform_dependent(
    y.reshape(b, h + 1, w + 1, 2, 2, cout),
    tpu=_phase_windows_stacked, default=_phase_windows_shifted)


def _phase_windows_shifted(y: jax.Array) -> jax.Array:
  """[B, H + 1, W + 1, a, b, C] -> out[:, 2i + a, 2j + b] = y[:, i + a, j + b, a, b]
  without a concatenation, which XLA:GPU would write out before the next
  padding gather: with the phase axis major, (a, k) flattened, padding the
  end by 2 and reshaping to rows of n + 2 moves row a's start by a."""
  b, h, w, _, _, cout = y.shape
  h, w = h - 1, w - 1
  y = jnp.transpose(y, (0, 3, 1, 4, 2, 5))  # [B, a, H + 1, b, W + 1, C]
  y = _shift_by_phase(y.reshape(b, 2 * (h + 1), 2 * (w + 1) * cout), h)  # [B, a, H, .]
  y = y.reshape(b, 2, h, 2, w + 1, cout).transpose(0, 3, 4, 2, 1, 5)  # [B, b, W + 1, H, a, C]
  y = _shift_by_phase(y.reshape(b, 2 * (w + 1), h * 2 * cout), w)  # [B, b, W, H * a * C]
  y = y.reshape(b, 2, w, h, 2, cout)  # [B, b, W, H, a, C]
  return jnp.transpose(y, (0, 3, 4, 2, 1, 5)).reshape(b, 2 * h, 2 * w, cout)


def _phase_windows_stacked(y: jax.Array) -> jax.Array:
  """_phase_windows_shifted's values as the four windows' slices stacked."""
  b, h, w, _, _, cout = y.shape
  h, w = h - 1, w - 1

  def phase(a, b_):  # [B, H, W, C]: phase (a, b) of every output pixel
    return jax.lax.slice(y, (0, a, b_, a, b_, 0), (b, a + h, b_ + w, a + 1, b_ + 1, cout)
                         ).reshape(b, h, w, cout)

  rows = [jnp.stack([phase(a, 0), phase(a, 1)], axis=3) for a in (0, 1)]  # [B, H, W, 2, C]
  return jnp.stack(rows, axis=2).reshape(b, 2 * h, 2 * w, cout)  # [B, H, 2, W, 2, C]


def _shift_by_phase(t: jax.Array, n: int) -> jax.Array:
  """[B, 2 * (n + 1), R] holding (phase p, position k) -> [B, 2, n, R]
  holding (p, k + p): row p of the result starts p positions later."""
  b, _, r = t.shape
  t = jax.lax.pad(t, jnp.zeros((), t.dtype), ((0, 0, 0), (0, 2, 0), (0, 0, 0)))
  return jax.lax.slice(t.reshape(b, 2, n + 2, r), (0, 0, 0, 0), (b, 2, n, r))


def _subpixel_resize_conv(conv: layers.Conv, x: jax.Array, dtype) -> jax.Array:
  """conv(reflect_pad(nearest_x2(x), 1)) without building the x2 map.

  With U = nearest_x2(x), reflect padding U by one repeats its edge pixel,
  which is nearest_x2 of x padded by edge replication. Output pixel
  (2i + a, 2j + b) then reads only rows i + a, i + a + 1 and columns
  j + b, j + b + 1 of that padded x, through a 2x2 kernel whose taps are
  sums of the 3x3 kernel's: for phase 0 the taps are (K0, K1 + K2), for
  phase 1 (K0 + K1, K2), per axis. Four 2x2 convolutions (16 MACs per input
  channel and low-resolution pixel, against 36) and an interleave give the
  same result to rounding.
  """
  b, h, w, c = x.shape
  # Create (or fetch) the conv's parameters through the module itself.
  conv(jnp.zeros((1, 3, 3, c), x.dtype))
  kernel = conv.variables["params"]["kernel"].astype(dtype)
  taps = (
    lambda k: jnp.stack([k[0], k[1] + k[2]]),  # phase 0
    lambda k: jnp.stack([k[0] + k[1], k[2]]),  # phase 1
  )
  padded = jnp.pad(x.astype(dtype), ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
  rows = []
  for a in (0, 1):
    k_rows = taps[a](kernel)  # [2, 3, Cin, Cout]
    cols = []
    for b_ in (0, 1):
      k = jnp.moveaxis(taps[b_](jnp.moveaxis(k_rows, 1, 0)), 0, 1)  # [2, 2, Cin, Cout]
      window = jax.lax.slice_in_dim(
        jax.lax.slice_in_dim(padded, a, a + h + 1, axis=1), b_, b_ + w + 1, axis=2)
      cols.append(jax.lax.conv_general_dilated(
        window, k, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")))
    rows.append(jnp.stack(cols, axis=3))  # [B, H, W, 2(b), Cout]
  out = jnp.stack(rows, axis=2)  # [B, H, 2(a), W, 2(b), Cout]
  out = out.reshape(b, 2 * h, 2 * w, -1)
  if "bias" in conv.variables["params"]:
    out = layers.bias_add(out, conv.variables["params"]["bias"])
  return out
