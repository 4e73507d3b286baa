"""Reflect-padded convolutions with 3 input or 3 output channels, in forms
with wider matrix dimensions: matmuls, or convolutions of pixel blocks.

The generator's first and last layers are 7x7 convolutions between RGB and
64 channels at full resolution. cuDNN runs them far below its rate on the
wide layers: on an H200 (bf16, profile of benchmarks/gpu_session.sh) they
took 16 ms of a 93 ms training iteration and 5.8 ms of 19.8 ms in inference
at 16-63 TFLOP/s, against 780 TFLOP/s for the residual blocks. An implicit
GEMM with 3 channels on one side has a 3-wide (or 3 x 49 deep, badly tiled)
matrix dimension. Written out, the same sums become one dense matmul with
147 = 7 x 7 x 3 on the narrow side, plus one memory pass:

- few inputs (conv_by_patches): gather the 147 values under each window
  (im2col, reflect padding included), then patches @ kernel[147, Cout].
- few outputs (conv_by_tap_products): x @ kernel[Cin, 147] gives every
  tap's contribution at every pixel; each output pixel sums its 49 taps'
  contributions from its reflected neighbours (col2im).

Both are the same function of the same parameters as
lax.conv(reflect_pad(x), kernel) (tested), with float32 accumulation; in
bfloat16 the tap products are rounded to bfloat16 before their float32 sum
(cuDNN rounds only the sum). Their gradients stay gathers, slices and
matmuls: no scatter.

A third form keeps the convolution but on 2x2 pixel blocks
(conv_space_to_depth): 12 channels (padded to 16) where there were 3, for
1.31x the MACs and, in the static H200 program, the same memory traffic as
the plain convolution (the rearrangements fuse into the padding gather).
Not yet measured on a GPU.

Measured on an H200 (config.model.generator.rgb_conv=matmul against conv,
bf16, same machine and call): inference at batch 256 12,618 against 13,162
img/s, and a training iteration at batch 48 0.116 s against 0.090 s (a
separate call). Not profiled; the likely cost is the extra
[B, H, W, 152] tensors (15 GB more traffic per training iteration, by
hlo_traffic) and the weight-gradient matmuls that XLA splits along their
786k-long contraction. `conv` is the default; this stays, tested, for
accelerators and XLA versions where the balance differs.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from fit_jax.models import layers

# Matmul dimensions padded to a multiple of this many elements: cuBLAS's
# tensor-core kernels want 16-byte-aligned rows, and XLA would otherwise
# insert its own padding copy of the [B, H, W, 147] operand.
_ALIGN = 8


def _aligned(n: int) -> int:
  return -n % _ALIGN


def _window(x: jax.Array, i: int, j: int, h: int, w: int) -> jax.Array:
  """x[:, i:i + h, j:j + w] as lax slices: under a symbolic batch size
  (the shape-polymorphic export) jnp indexing can become a gather, which
  TFLite lacks (the same goes for the channel slices here)."""
  return jax.lax.slice_in_dim(jax.lax.slice_in_dim(x, i, i + h, axis=1), j, j + w, axis=2)


@functools.partial(jax.checkpoint, static_argnums=(2, 3))
def conv_by_patches(x: jax.Array, kernel: jax.Array, pad: int, pad_ops: str) -> jax.Array:
  """lax.conv(reflect_pad(x, pad), kernel, VALID) for few input channels.

  Args:
    x: [B, H, W, Cin] (Cin small: the patches are [B, H, W, k*k*Cin]).
    kernel: [k, k, Cin, Cout] with k = 2 * pad + 1 (same output size).
    pad: reflect padding on each side.
    pad_ops: layers.reflect_pad's `ops`.

  Returns:
    [B, H, W, Cout] in x's dtype. Rematerialised (jax.checkpoint): training
    keeps x, not the patches, for the backward pass, which rebuilds them in
    one pass.
  """
  kh, kw, cin, cout = kernel.shape
  if kh != 2 * pad + 1 or kw != kh:
    raise ValueError(f"kernel {kernel.shape} is not {2 * pad + 1}x{2 * pad + 1}")
  b, h, w, _ = x.shape
  padded = layers.reflect_pad(x, pad, ops=pad_ops)
  windows = [_window(padded, i, j, h, w) for i in range(kh) for j in range(kw)]
  depth = kh * kw * cin
  extra = _aligned(depth)
  if extra:
    windows.append(jnp.zeros((b, h, w, extra), x.dtype))
  patches = jnp.concatenate(windows, axis=-1)
  weights = jnp.pad(kernel.reshape(depth, cout), ((0, extra), (0, 0)))
  return jnp.einsum("bhwk,ko->bhwo", patches, weights)


def conv_by_tap_products(x: jax.Array, kernel: jax.Array, pad: int, pad_ops: str) -> jax.Array:
  """lax.conv(reflect_pad(x, pad), kernel, VALID) for few output channels.

  Args:
    x: [B, H, W, Cin].
    kernel: [k, k, Cin, Cout] with k = 2 * pad + 1 and Cout small (the tap
      products are [B, H, W, k*k*Cout]).
    pad: reflect padding on each side.
    pad_ops: layers.reflect_pad's `ops`.

  Returns:
    [B, H, W, Cout] in float32.
  """
  kh, kw, cin, cout = kernel.shape
  if kh != 2 * pad + 1 or kw != kh:
    raise ValueError(f"kernel {kernel.shape} is not {2 * pad + 1}x{2 * pad + 1}")
  _, h, w, _ = x.shape
  taps = kh * kw * cout
  extra = _aligned(taps)
  # [Cin, (i, j, c)]: column (i * kw + j) * cout + c is tap (i, j)'s kernel.
  weights = jnp.pad(
    jnp.transpose(kernel, (2, 0, 1, 3)).reshape(cin, taps), ((0, 0), (0, extra)))
  products = jnp.einsum("bhwc,ct->bhwt", x, weights)
  # Reflect padding commutes with a per-pixel linear map: pad the products.
  padded = layers.reflect_pad(products, pad, ops=pad_ops)
  total = None
  for i in range(kh):
    for j in range(kw):
      t = (i * kw + j) * cout
      term = jax.lax.slice_in_dim(_window(padded, i, j, h, w), t, t + cout, axis=3)
      term = term.astype(jnp.float32)
      total = term if total is None else total + term
  return total


def conv_space_to_depth(
  x: jax.Array, kernel: jax.Array, pad: int, pad_ops: str, block: int = 2,
  padded: bool = False,
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
    pad_ops: layers.reflect_pad's `ops`.
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
    x = layers.reflect_pad(x, pad, ops=pad_ops)
  padded = jnp.pad(x, ((0, 0), (0, rows - (h + 2 * pad)), (0, cols - (w + 2 * pad)), (0, 0)))
  cin_blocked, cout_blocked = block * block * cin, block * block * cout
  extra_in, extra_out = _aligned(cin_blocked), _aligned(cout_blocked)
  blocks = padded.reshape(b, rows // block, block, cols // block, block, cin)
  blocks = jnp.transpose(blocks, (0, 1, 3, 2, 4, 5)).reshape(
    b, rows // block, cols // block, cin_blocked)
  blocks = jnp.pad(blocks, ((0, 0),) * 3 + ((0, extra_in),))
  blocked = _blocked_kernel(kernel, block, n)
  blocked = jnp.pad(blocked, ((0, 0), (0, 0), (0, extra_in), (0, extra_out)))
  out = jax.lax.conv_general_dilated(
    blocks, blocked, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
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
    rows.append(jnp.stack([
      jnp.einsum("pqxco,xrs->prcqso", along_y, jnp.asarray(select[:, dx], kernel.dtype))
      .reshape(block * block * cin, block * block * cout)
      for dx in range(n)
    ]))
  return jnp.stack(rows)
