"""Multi-scale PatchGAN discriminators (docs/reference.md §3).

`MultiscaleDiscriminatorSharedFE` of the original: one fine PatchGAN per
branch (`M` anonymized, `R` recovered, `WR` wrong-recovered) at 128x128 and a
single coarse PatchGAN shared by all branches on a 2x average-pooled input.
"""

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from fit_jax.models import layers

Dtype = Any
BRANCHES = ("M", "R", "WR")


def avg_pool_exclude_pad(x: jax.Array) -> jax.Array:
  """AvgPool2d(3, stride 2, pad 1, count_include_pad=False) on NHWC."""
  pad = ((0, 0), (1, 1), (1, 1), (0, 0))
  window, strides = (1, 3, 3, 1), (1, 2, 2, 1)
  total = jax.lax.reduce_window(x, 0.0, jax.lax.add, window, strides, pad)
  ones = jnp.ones((1,) + x.shape[1:3] + (1,), x.dtype)
  count = jax.lax.reduce_window(ones, 0.0, jax.lax.add, window, strides, pad)
  return total / count


class PatchGAN(nn.Module):
  """CycleGAN NLayerDiscriminator(ndf=64, n_layers=3), LSGAN (no sigmoid)."""

  ndf: int = 64
  num_layers: int = 3
  norm: str = "batch_stats"
  norm_group_size: int = 0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool, stat_groups: int = 1) -> jax.Array:
    pad = ((1, 1), (1, 1))
    x = x.astype(self.dtype)
    for i in range(self.num_layers + 1):
      features = self.ndf * 2 ** min(i, 3)
      # The first layer has a bias and no norm; the last stride-1 layer too.
      stride = 2 if i < self.num_layers else 1
      x = layers.Conv(
        features,
        (4, 4),
        strides=(stride, stride),
        padding=pad,
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
    x = nn.Conv(
      1,
      (4, 4),
      padding=pad,
      use_bias=False,
      kernel_init=layers.conv_init,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      name="conv_out",
    )(x)
    return x.astype(jnp.float32)


class MultiScaleDiscriminator(nn.Module):
  """Fine PatchGANs for branches M, R, WR and one shared coarse PatchGAN."""

  ndf: int = 64
  num_layers: int = 3
  norm: str = "batch_stats"
  norm_group_size: int = 0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def setup(self):
    kw = dict(
      ndf=self.ndf,
      num_layers=self.num_layers,
      norm=self.norm,
      norm_group_size=self.norm_group_size,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
    )
    self.fine_nets = {b: PatchGAN(**kw, name=f"fine_{b}") for b in BRANCHES}
    self.coarse_net = PatchGAN(**kw, name="coarse")

  def __call__(self, images: jax.Array, branch: str, train: bool) -> tuple[jax.Array, jax.Array]:
    """Both scales of one branch.

    Args:
      images: [B, 128, 128, 3] in [-1, 1].
      branch: one of `M`, `R`, `WR`.
      train: whether batch statistics are updated (mode `batch`).

    Returns:
      (fine [B, 14, 14, 1], coarse [B, 6, 6, 1]) patch maps, float32.
    """
    if self.is_initializing():
      for b in BRANCHES:
        self.fine(images, b, train)
    return self.fine(images, branch, train), self.coarse(images, train)

  def fine(self, images: jax.Array, branch: str, train: bool, stat_groups: int = 1) -> jax.Array:
    """The fine PatchGAN of one branch."""
    if branch not in BRANCHES:
      raise ValueError(f"branch {branch!r} is not one of {BRANCHES}")
    return self.fine_nets[branch](images, train, stat_groups)

  def coarse(self, images: jax.Array, train: bool, stat_groups: int = 1) -> jax.Array:
    """The shared coarse PatchGAN; `stat_groups` batches several branches."""
    return self.coarse_net(avg_pool_exclude_pad(images.astype(jnp.float32)), train, stat_groups)
