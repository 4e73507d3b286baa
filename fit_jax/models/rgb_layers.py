"""The 7x7 convolutions between RGB and the first/last feature maps.

The generator's first and last layers are 7x7 convolutions between RGB (plus
the password's constant channels) and 64 channels at full resolution. cuDNN
runs them far below its rate on the wide layers: on an H200 (bf16) they took
16 ms of a 93 ms training iteration and 5.8 ms of 19.8 ms in inference, at
16-63 TFLOP/s against 780 for the residual blocks, because an implicit GEMM
with 3 channels on one side has a 3-wide matrix dimension. `space_to_depth`
computes the same convolution on block x block pixel blocks: 3 channels
become 48 at block 4, the shapes of the residual blocks' convolutions, for
2.94x the MACs of these small layers. GPUs use it; CPUs and TPUs the plain
convolution (models.generator_layout).

The password's N channels are constant over the image and reflect padding
keeps them constant, so their share of the first convolution is exactly a
per-image bias z @ sum_{kh,kw} W[..., 3:, :] (`input_conv`).
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from fit_jax.models import layers, padding

Dtype = Any

RGB_CONV_MODES = ("conv", "space_to_depth")
# Channel counts padded to a multiple of this: cuDNN's tensor-core kernels
# want 16-byte-aligned rows.
_ALIGN = 8


def input_conv(
  images: jax.Array,
  password: jax.Array,
  kernel: jax.Array,
  rgb_conv: str,
  block: int,
  pad_ops: str,
  dtype,
) -> jax.Array:
  """lax.conv(reflect_pad(concat(images, broadcast(password)), 3), kernel) in
  float32: the RGB channels convolved, the password's added as a bias.

  Args:
    images: [B, H, W, 3]; password: [B, N]; kernel: [7, 7, 3 + N, C].
  """
  rgb_kernel = kernel[:, :, :3].astype(dtype)
  if rgb_conv == "space_to_depth":
    x = conv_space_to_depth(images.astype(dtype), rgb_kernel, 3, pad_ops, block)
  else:
    x = jax.lax.conv_general_dilated(
      padding.reflect_pad(images.astype(dtype), 3, ops=pad_ops),
      rgb_kernel,
      window_strides=(1, 1),
      padding="VALID",
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
  password_bias = jnp.dot(
    password.astype(jnp.float32), jnp.sum(kernel[:, :, 3:].astype(jnp.float32), axis=(0, 1))
  )
  # Added in float32, as the normalisation computes anyway: in bfloat16,
  # XLA on GPU would make this per-image bias a full-size side input of the
  # cuDNN call (a materialised broadcast, two extra passes over the map).
  return x.astype(jnp.float32) + password_bias[:, None, None, :]


class OutputConv(nn.Module):
  """Reflect pad 3, then nn.Conv(3, (7, 7)) with its parameters, as a plain
  convolution (`conv`) or on pixel blocks (`space_to_depth`)."""

  rgb_conv: str
  block: int
  reflect_pad_ops: str
  dtype: Dtype
  param_dtype: Dtype

  @nn.compact
  def __call__(self, x: jax.Array, padded: bool = False) -> jax.Array:
    """x: [B, H, W, C], or already reflect-padded by 3 if `padded` (rgb_conv
    `conv` or `space_to_depth`)."""
    kernel = self.param("kernel", layers.conv_init, (7, 7, x.shape[-1], 3), self.param_dtype)
    bias = self.param("bias", nn.initializers.zeros, (3,), self.param_dtype)
    if self.rgb_conv == "space_to_depth":
      y = conv_space_to_depth(
        x.astype(self.dtype),
        kernel.astype(self.dtype),
        3,
        self.reflect_pad_ops,
        self.block,
        padded=padded,
      )
      return layers.bias_add(y, bias)
    if not padded:
      x = padding.reflect_pad(x, 3, ops=self.reflect_pad_ops)
    y = jax.lax.conv_general_dilated(
      x.astype(self.dtype),
      kernel.astype(self.dtype),
      window_strides=(1, 1),
      padding="VALID",
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    return layers.bias_add(y, bias)


def _aligned(n: int) -> int:
  return -n % _ALIGN


def conv_space_to_depth(
  x: jax.Array, kernel: jax.Array, pad: int, pad_ops: str, block: int = 2, padded: bool = False
) -> jax.Array:
  """lax.conv(reflect_pad(x, pad), kernel, VALID), computed on block x block
  pixel blocks: a convolution whose channels are (pixel in block, channel).

  Output pixel o = block * ob + po reads input pixels o + t (t < k) of the
  padded x; as blocks, input block ob + d (d < n = ceil((block - 1 + k) /
  block)), pixel pi, at tap t = block * d + pi - po. So with x and the
  output rearranged into blocks (space to depth), the k x k convolution is an
  n x n one with block^2 * Cin inputs and block^2 * Cout outputs, whose
  kernel holds K[t] where 0 <= t < k and zeros elsewhere: 3 RGB channels
  become 12 (padded to 16), on either side, which tensor-core kernels tile
  far better than 3; the zeros cost (n * block / k)^2 = 1.31x the MACs for
  k = 7, block = 2. Channel counts are padded to multiples of 8 with zero
  kernels; the rearrangements are index maps that XLA fuses into the
  neighbouring passes (the padding gather before, the next layer after).

  Args:
    x: [B, H, W, Cin], H and W multiples of `block`.
    kernel: [k, k, Cin, Cout], k = 2 * pad + 1.
    pad: reflect padding on each side.
    pad_ops: padding.reflect_pad's `ops`.
    block: pixels per block side.
    padded: x is already reflect_pad(x, pad) ([B, H + 2 pad, W + 2 pad, Cin]).

  Returns:
    [B, H, W, Cout] in x's dtype.
  """
  k, kw, cin, cout = kernel.shape
  if k != 2 * pad + 1 or kw != k:
    raise ValueError(f"kernel {kernel.shape} is not {2 * pad + 1}x{2 * pad + 1}")
  b, h, w, _ = x.shape
  if padded:
    h, w = h - 2 * pad, w - 2 * pad
  if h % block or w % block:
    raise ValueError(f"image {h}x{w} is not a multiple of the {block}-pixel block")
  n = -(-(block - 1 + k) // block)
  # Input blocks h / block + n - 1: the padded image, plus zero rows and
  # columns (read only through zero taps) up to whole blocks.
  rows, cols = (h // block + n - 1) * block, (w // block + n - 1) * block
  if not padded:
    x = padding.reflect_pad(x, pad, ops=pad_ops)
  padded = jnp.pad(x, ((0, 0), (0, rows - (h + 2 * pad)), (0, cols - (w + 2 * pad)), (0, 0)))
  cin_blocked, cout_blocked = block * block * cin, block * block * cout
  extra_in, extra_out = _aligned(cin_blocked), _aligned(cout_blocked)
  blocks = padded.reshape(b, rows // block, block, cols // block, block, cin)
  blocks = jnp.transpose(blocks, (0, 1, 3, 2, 4, 5)).reshape(
    b, rows // block, cols // block, cin_blocked
  )
  blocks = jnp.pad(blocks, ((0, 0),) * 3 + ((0, extra_in),))
  blocked = _blocked_kernel(kernel, block, n)
  blocked = jnp.pad(blocked, ((0, 0), (0, 0), (0, extra_in), (0, extra_out)))
  out = jax.lax.conv_general_dilated(
    blocks, blocked, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
  )
  out = jax.lax.slice_in_dim(out, 0, cout_blocked, axis=3)
  out = out.reshape(b, h // block, w // block, block, block, cout)
  return jnp.transpose(out, (0, 1, 3, 2, 4, 5)).reshape(b, h, w, cout)


def _blocked_kernel(kernel: jax.Array, block: int, n: int) -> jax.Array:
  """[n, n, block^2 * Cin, block^2 * Cout]: for block offset (dy, dx), input
  pixel (piy, pix) and output pixel (poy, pox), the k x k kernel's tap
  (block * dy + piy - poy, block * dx + pix - pox), or zeros outside it.

  Built as exact 0/1 contractions (so its gradient is one too, not a
  scatter), one block offset at a time: no intermediate has more than 6
  dimensions, the most TFLite's transpose takes.
  """
  k, _, cin, cout = kernel.shape
  # select[t, d, pi, po] = 1 where tap t is block offset d, pixel pi -> po.
  t = np.arange(k)[:, None, None, None]
  d = np.arange(n)[None, :, None, None]
  pi = np.arange(block)[None, None, :, None]
  po = np.arange(block)[None, None, None, :]
  select = (t == block * d + pi - po).astype(np.float32)
  rows = []
  for dy in range(n):
    along_y = jnp.einsum("ypq,yxco->pqxco", jnp.asarray(select[:, dy], kernel.dtype), kernel)
    rows.append(
      jnp.stack(
        [
          jnp.einsum(
            "pqxco,xrs->prcqso", along_y, jnp.asarray(select[:, dx], kernel.dtype)
          ).reshape(block * block * cin, block * block * cout)
          for dx in range(n)
        ]
      )
    )
  return jnp.stack(rows)
