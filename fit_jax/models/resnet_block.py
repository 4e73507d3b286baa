"""The generator's residual block (docs/reference.md, "Generator").

reflect-pad, conv3x3, norm, ReLU, reflect-pad, conv3x3, norm, + identity, as
the original `ResnetBlock` (no dropout, no activation after the addition).
"""

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from fit_jax.models import layers, padding

Dtype = Any


class ResnetBlock(nn.Module):
  """reflect-pad, conv3x3, norm, ReLU, reflect-pad, conv3x3, norm, + identity.

  `padded` (folded norms only): x arrives reflect-padded by one pixel and the
  output leaves padded by one pixel too, by `border` (padding.BORDER_MODES:
  the last block pads as the next layer wants).
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
    y = padding.reflect_pad(x, 1, ops=self.reflect_pad_ops)
    for i in range(2):
      y = self._conv(i, x.shape[-1], "VALID")(y)
      # The first norm's ReLU and the second conv's padding in one op (its
      # gradient in two passes, norm_kernels.norm_act_pad).
      y = self._norm(i)(y, train, stat_groups, relu=i == 0, pad=1 - i, pad_ops=self.reflect_pad_ops)
    # No activation after the addition, as the original ResnetBlock.
    return x + y

  def _conv(self, i: int, features: int, conv_padding) -> nn.Conv:
    return nn.Conv(
      features,
      (3, 3),
      padding=conv_padding,
      use_bias=False,
      kernel_init=layers.conv_init,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      name=f"conv_{i}",
    )

  def _norm(self, i: int) -> layers.Norm:
    return layers.Norm(
      self.norm,
      self.norm_group_size,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      name=f"norm_{i}",
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
        y = padding.rewrite_border(y, 1)
    return padding.rewrite_border(x + y, 1, self.border)
