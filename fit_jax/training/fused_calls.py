"""Several calls of a network as one call on a fused batch.

The reference calls G five times per iteration, each call normalising with
its own batch statistics. Fused, the calls that share an input run as one
batched call whose norms keep each call's statistics apart (layers.Norm's
`stat_groups`): the same maths, larger kernels (train.fuse_calls).
"""

import jax
import jax.numpy as jnp


def apply(module, params, stats, *args, mutable: bool, **kwargs):
  """Applies a module; returns (output, new batch stats)."""
  variables = {"params": params}
  if stats:
    variables["batch_stats"] = stats
  if mutable and stats:
    out, updates = module.apply(variables, *args, mutable=["batch_stats"], **kwargs)
    return out, updates["batch_stats"]
  return module.apply(variables, *args, **kwargs), stats


def fuse(parts: list[jax.Array]) -> jax.Array:
  """One batch of several calls' equal batches, interleaved image by image.

  Row `b * len(parts) + i` is image b of part i, so each device's slice of
  the fused batch holds its own images of every part: the fused batch stays
  sharded like the parts, with no data movement (concatenating the parts
  would put part 0 on the first devices, and XLA then gathered every image
  onto every device). layers.Norm's stat groups use the same layout.
  """
  return jnp.stack(parts, axis=1).reshape((-1,) + parts[0].shape[1:])


def split(array: jax.Array, parts: int) -> list[jax.Array]:
  """A fused call's output back into its parts (the inverse of fuse)."""
  grouped = array.reshape((-1, parts) + array.shape[1:])
  return [grouped[:, i] for i in range(parts)]


class Calls:
  """Train-mode calls of one module (batch statistics), whose running
  statistics, if it keeps any, carry from call to call in call order; with
  carry=False they are computed and dropped (a frozen network's)."""

  def __init__(self, module, params, stats, carry: bool = True):
    self.module, self.params, self.stats, self.carry = module, params, stats, carry

  def __call__(self, *args, **kwargs):
    out, stats = apply(
      self.module, self.params, self.stats, *args, train=True, mutable=True, **kwargs
    )
    if self.carry:
      self.stats = stats
    return out


def together(call, parts: list[tuple], **kwargs) -> list:
  """The outputs of call(*part) for each part, from one call on the fused
  parts whose norms keep each part's statistics apart (stat_groups)."""
  fused = [fuse(list(column)) for column in zip(*parts)]
  return split(call(*fused, stat_groups=len(parts), **kwargs), len(parts))
