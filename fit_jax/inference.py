"""Inference-time transforms of a trained generator.

`fold_batch_norm` folds `norm=batch` running statistics (and BN scale) into
the preceding convolutions: conv -> BN becomes conv(W * s) + t with
s = gamma / sqrt(var + eps), t = beta - mean * s. The result is a Generator
with `norm='folded'`, whose normalisation is a bias add that XLA fuses into
the convolution, and whose outputs equal the unfolded model's at
`train=False` (per-image deterministic, batch-independent).
"""

import dataclasses

import jax.numpy as jnp

from fit_jax.models import generator as generator_lib

_EPS = 1e-5


def _conv_norm_pairs(model: generator_lib.Generator):
  """(conv path, norm path, conv has bias) for every normalised convolution."""
  pairs = [(("conv_in",), ("norm_in",), False)]
  for i in range(model.num_downsampling):
    pairs.append(((f"down_{i}", "kernel"), (f"down_norm_{i}",), False))
  for b in range(model.num_blocks):
    for j in range(2):
      pairs.append(((f"block_{b}", f"conv_{j}", "kernel"), (f"block_{b}", f"norm_{j}"), False))
  for i in range(model.num_downsampling):
    pairs.append(((f"up_{i}", "kernel"), (f"up_norm_{i}",), True))
  return pairs


def _get(tree, path):
  for key in path:
    tree = tree[key]
  return tree


def _set(tree, path, value):
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def _copy(tree):
  return {k: _copy(v) for k, v in tree.items()} if isinstance(tree, dict) else tree


def fold_batch_norm(
  model: generator_lib.Generator, variables: dict
) -> tuple[generator_lib.Generator, dict]:
  """Returns (folded generator, its variables) for `norm='batch'` models.

  Raises:
    ValueError: the model normalises with batch or image statistics at
      inference (`batch_stats`, `instance`), which cannot be folded.
  """
  if model.norm != "batch":
    raise ValueError(
      f"only norm='batch' generators can be folded; this one uses "
      f"norm={model.norm!r} (statistics computed from the inputs)"
    )
  params = _copy(variables["params"])
  stats = variables["batch_stats"]
  for conv_path, norm_path, has_bias in _conv_norm_pairs(model):
    norm = _get(params, norm_path)
    mean, var = (_get(stats, norm_path)[k] for k in ("mean", "var"))
    scale = norm["scale"] * jnp.reciprocal(jnp.sqrt(var + _EPS))
    shift = norm["bias"] - mean * scale
    _set(params, conv_path, _get(params, conv_path) * scale)
    if has_bias:
      bias_path = conv_path[:-1] + ("bias",)
      shift = shift + _get(params, bias_path) * scale
      _set(params, bias_path, jnp.zeros_like(shift))
    _set(params, norm_path, {"bias": shift})
  folded = dataclasses.replace(model, norm="folded")
  return folded, {"params": params}
