"""Reflect and edge padding, with hand-written gradients.

The generator pads every convolution's input (reflect padding, as the
reference) and the phase up layers' (edge). jnp.pad's automatic gradient of
a reflect padding is a scatter-add on accelerators; these gradients sum the
mirrored rows and columns with slices instead (the same values), and one
gather pads in a single pass over memory (`ops="gather"`), or jnp.pad's
concatenations do, for TFLite (`ops="concatenate"`).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

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
  return (reflect_pad_transpose(grad, pad, upsample),)


def reflect_pad_transpose(grad: jax.Array, pad: int, upsample: int, dtype=None) -> jax.Array:
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
    default=functools.partial(_transpose_as_chain, pad=pad, upsample=upsample, dtype=dtype),
  )


def _transpose_as_chain(grad: jax.Array, pad: int, upsample: int, dtype) -> jax.Array:
  b, h, w, c = grad.shape
  shape = (b, (h - 2 * pad) // upsample, (w - 2 * pad) // upsample, c)
  transpose = jax.linear_transpose(
    functools.partial(reflect_pad_reference, pad=pad, upsample=upsample),
    jax.ShapeDtypeStruct(shape, jnp.float32),
  )
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
        term = jax.lax.pad(
          term, jnp.float32(0), ((0, 0, 0), (r_low, r_high, 0), (c_low, c_high, 0), (0, 0, 0))
        )
      total = term if total is None else total + term
  return total.astype(dtype)


def _transpose_terms(size: int, pad: int, upsample: int) -> list[tuple]:
  """Along one axis of the padded grid (`size` cells): the slices whose sum
  is the transpose, as (start, stop, stride, flipped, zeros before, zeros
  after) in x's rows."""
  full = size - 2 * pad
  n = full // upsample
  if upsample == 1:  # the centre, then each border as one mirrored block
    return [
      (pad, pad + n, 1, False, 0, 0),
      (0, pad, 1, True, 1, n - 1 - pad),
      (pad + n, size, 1, True, n - 1 - pad, 1),
    ]
  terms = [
    (pad + phase, pad + phase + upsample * (n - 1) + 1, upsample, False, 0, 0)
    for phase in range(upsample)
  ]
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
    y[:, rows[dst_r], cols[dst_c]], unique_indices=True, indices_are_sorted=True
  )


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
    jax.ShapeDtypeStruct((b, h - 2 * pad, w - 2 * pad, c), grad.dtype),
  )
  return transpose(grad)


def _edge_pad_by_slices(x, pad):
  """edge_pad_reference's values from slices of H and W only. jnp.pad's edge
  mode also slices every axis it leaves unpadded; transposed, the batch
  axis's slice became a zero padding of the batch, which XLA's SPMD
  partitioner turned into a collective-permute between the devices of a
  data-parallel mesh (tests/training/train_test.py checks that none remains)."""
  for axis in (1, 2):
    n = x.shape[axis]
    first = jax.lax.slice_in_dim(x, 0, 1, axis=axis)
    last = jax.lax.slice_in_dim(x, n - 1, n, axis=axis)
    x = jnp.concatenate([first] * pad + [x] + [last] * pad, axis=axis)
  return x


_edge_pad.defvjp(_edge_pad_fwd, _edge_pad_bwd)
