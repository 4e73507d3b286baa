"""The generator's up layers: the reference's resize-convolution (nearest x2,
reflect pad 1, 3x3 convolution) and the same function computed from the
low-resolution map.

With U = nearest_x2(x), reflect padding U by one repeats its edge pixel,
which is nearest_x2 of x padded by edge replication. Output pixel
(2i + a, 2j + b) then reads only rows i + a, i + a + 1 and columns
j + b, j + b + 1 of that padded x, through a 2x2 kernel whose taps are sums
of the 3x3 kernel's: (K0, K1 + K2) for phase 0 and (K0 + K1, K2) for phase
1, per axis. `phase_2x2` computes all four phases as one 2x2 convolution
(fewer MACs, no x2 map written and read), which CPUs and GPUs run faster;
TPUs keep the resize-convolution (docs/performance.md).
"""

import jax
import jax.numpy as jnp

from fit_jax.models import layers, padding

UPSAMPLE_MODES = ("resize_conv", "phase_2x2")


def resize_conv(conv: layers.Conv, x: jax.Array, padded: bool, pad_ops: str) -> jax.Array:
  """The reference's order: nearest x2 and reflect pad (one gather, or
  nothing if x arrives `padded`), then the 3x3 convolution."""
  return conv(x if padded else padding.reflect_pad(x, 1, 2, ops=pad_ops))


def phase_2x2(
  conv: layers.Conv, x: jax.Array, dtype, pad_ops: str, edge_padded: bool = False
) -> jax.Array:
  """conv(reflect_pad(nearest_x2(x), 1)) as one 2x2 convolution of x.

  Per axis, output pixel 2i + a reads two rows of x edge-padded by one (xp):
  xp[i], xp[i + 1] with taps (K0, K1 + K2) for a = 0, and xp[i + 1],
  xp[i + 2] with taps (K0 + K1, K2) for a = 1 (module docstring).
  So one 2x2 VALID convolution of xp with the four phases' kernels stacked
  on the output axis, evaluated at the (H + 1) x (W + 1) positions, holds
  phase (a, b) of output pixel (2i + a, 2j + b) in channel group (a, b) at
  position (i + a, j + b): 16 (H + 1)(W + 1) / (36 H W) of the
  resize-convolution's MACs, 0.47x at 32x32, in one cuDNN call per layer
  and no x2 input map. The
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
    [jnp.stack(taps(rows, 1), axis=3) for rows in taps(kernel, 0)], axis=3
  ).reshape(2, 2, c, 4 * cout)  # output channel (a * 2 + b) * Cout + o
  xp = x.astype(dtype) if edge_padded else padding.edge_pad(x.astype(dtype), 1, ops=pad_ops)
  y = jax.lax.conv_general_dilated(
    xp, stacked.astype(dtype), (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
  )  # [B, H + 1, W + 1, 4 Cout]
  if "bias" in conv.variables["params"]:
    y = layers.bias_add(y, jnp.tile(conv.variables["params"]["bias"], 4))

  # out[:, 2i + a, 2j + b] = y[:, i + a, j + b, group (a, b)].
  return jax.lax.platform_dependent(
    y.reshape(b, h + 1, w + 1, 2, 2, cout),
    tpu=_phase_windows_stacked,
    default=_phase_windows_shifted,
  )


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
    return jax.lax.slice(y, (0, a, b_, a, b_, 0), (b, a + h, b_ + w, a + 1, b_ + 1, cout)).reshape(
      b, h, w, cout
    )

  rows = [jnp.stack([phase(a, 0), phase(a, 1)], axis=3) for a in (0, 1)]  # [B, H, W, 2, C]
  return jnp.stack(rows, axis=2).reshape(b, 2 * h, 2 * w, cout)  # [B, H, 2, W, 2, C]


def _shift_by_phase(t: jax.Array, n: int) -> jax.Array:
  """[B, 2 * (n + 1), R] holding (phase p, position k) -> [B, 2, n, R]
  holding (p, k + p): row p of the result starts p positions later."""
  b, _, r = t.shape
  t = jax.lax.pad(t, jnp.zeros((), t.dtype), ((0, 0, 0), (0, 2, 0), (0, 0, 0)))
  return jax.lax.slice(t.reshape(b, 2, n + 2, r), (0, 0, 0, 0), (b, 2, n, r))
