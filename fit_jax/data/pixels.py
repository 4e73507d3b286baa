"""The one mapping between 8-bit pixels and the model's [-1, 1] values.

The reference normalises with mean 0.5 and std 0.5 per channel, i.e.
x = p / 127.5 - 1 for a uint8 pixel p. Both functions take numpy or jax arrays
(only array methods are used), so the exported graph converts exactly as the
photo tool does.
"""

import numpy as np


def to_unit(pixels):
  """uint8 (or any 0..255 array) -> float32 in [-1, 1]."""
  return pixels.astype(np.float32) / 127.5 - 1.0


def to_uint8(values):
  """[-1, 1] -> uint8, rounded to the nearest level (out-of-range clipped)."""
  return ((values + 1.0) * 127.5 + 0.5).clip(0, 255).astype(np.uint8)
