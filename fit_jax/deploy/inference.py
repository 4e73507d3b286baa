"""Inference-time transforms of a trained generator.

`fold_batch_norm` folds `norm=batch` running statistics (and BN scale) into
the preceding convolutions: conv -> BN becomes conv(W * s) + t with
s = gamma / sqrt(var + eps), t = beta - mean * s. The result is a Generator
with `norm='folded'`, whose normalisation is a bias add that XLA fuses into
the convolution, and whose outputs equal the unfolded model's at
`train=False` (per-image deterministic, batch-independent).
"""

import dataclasses
import os

import jax.numpy as jnp

from fit_jax.models import generator as generator_lib
from fit_jax.models import generator_layout
from fit_jax.training import passwords

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


def _folded_keeps_conv_bias(model: generator_lib.Generator, conv_path) -> bool:
  """The phase upsampling modes add an up-convolution's bias themselves,
  tiled over the output phases (where XLA fuses it into the cuDNN call);
  elsewhere the folded norm's bias carries it."""
  return model.upsample == "phase_2x2" and conv_path[0].startswith("up_")


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
    if has_bias and _folded_keeps_conv_bias(model, conv_path):
      # All of the norm goes into the convolution: the folded generator has
      # no norm there (a zero bias after the depth-to-space would become a
      # full-size cuDNN side input).
      conv = _get(params, conv_path[:-1])
      conv["bias"] = conv["bias"] * scale + shift
      del params[norm_path[0]]
      continue
    if has_bias:
      # The folded generator's convolution has no bias of its own.
      conv = _get(params, conv_path[:-1])
      shift = shift + conv.pop("bias") * scale
    _set(params, norm_path, {"bias": shift})
  folded = dataclasses.replace(model, norm="folded")
  return folded, {"params": params}


# ------------------------------------------------------------------ loading


def generator_from_params(params: dict, batch_stats: dict | None):
  """A Generator whose sizes are read off its parameters, computing in the
  layout fastest on JAX's default backend (models.generator_layout: the
  parameters are the same under every layout, whatever trained them)."""
  conv_in = params["conv_in"]
  blocks = sum(1 for k in params if k.startswith("block_"))
  downs = sum(1 for k in params if k.startswith("down_") and not k.startswith("down_norm"))
  return generator_lib.Generator(
    password_bits=int(conv_in.shape[2]) - 3,
    ngf=int(conv_in.shape[3]),
    num_downsampling=downs,
    num_blocks=blocks,
    norm="batch" if batch_stats else "batch_stats",
    **generator_layout.resolve({}),
  )


def check_image_size(model, size: int) -> None:
  """Raises ValueError (one line) unless the generator can run on size x size
  faces: at least 16 pixels, a multiple of its downsampling."""
  multiple = 2**model.num_downsampling
  if size < 16 or size % multiple:
    raise ValueError(
      f"--size {size}: give a side of at least 16 pixels that is a "
      f"multiple of {multiple} (this generator's downsampling)"
    )


def load_generator(path: str):
  """Loads a generator from a training workdir, a checkpoint step, a
  converted directory (python -m fit_jax.convert_torch) or a release
  (python -m fit_jax.release).

  Returns:
    (generator, variables, deterministic): `deterministic` is False for
    checkpoints without running statistics (the reference's batch_stats
    mode), whose outputs depend on the batch (see Transformer).

  Raises:
    ValueError / FileNotFoundError: one line naming the path.
  """
  from fit_jax.conversion import pretrained  # noqa: PLC0415
  from fit_jax.deploy import release  # noqa: PLC0415

  if release.is_release(os.path.expanduser(path)):
    _, tree = release.load(os.path.expanduser(path))
    tree = {"generator": tree}
  else:
    path, tree = pretrained.restore_checkpoint(path)
  if "gen" in tree:  # a training FitState
    params = tree["gen"]["params"]["generator"]
    stats = tree["gen"]["batch_stats"].get("generator") or None
  elif "generator" in tree:  # converted variables
    params = tree["generator"]["params"]
    stats = tree["generator"].get("batch_stats")
  else:
    raise ValueError(f"{path}: holds no generator (keys {sorted(tree)[:6]})")
  model = generator_from_params(params, stats)
  variables = {"params": params}
  if stats:
    variables["batch_stats"] = stats
    model, variables = fold_batch_norm(model, variables)
  return model, variables, bool(stats)


class Transformer:
  """Jitted anonymize/recover of [B, 128, 128, 3] images in [-1, 1].

  `password_bits` are the user's bits [N] (or [B, N]); recover applies the
  inverse (complement) itself, so users give the same password to both.
  With folded running statistics every output is independent of its batch.
  A checkpoint without them (the reference's batch_stats mode) normalises
  with the statistics of the batch it is given, as the reference's
  save_visual.py: outputs then depend on the batch, and a batch of one
  image would erase the password entirely (its per-image constant channels
  are exactly what the first BatchNorm subtracts), so that is refused.
  """

  def __init__(self, model, variables, deterministic: bool, scale: float = 1.0):
    import jax  # noqa: PLC0415

    self.model = model
    self.variables = variables
    self.deterministic = deterministic
    self.scale = scale
    self.password_bits = model.password_bits
    self._apply = jax.jit(lambda v, x, z: model.apply(v, x, z, train=False))

  def _run(self, images, bits, sign):
    import numpy as np  # noqa: PLC0415

    images = np.asarray(images, np.float32)
    bits = np.asarray(bits)
    if bits.ndim == 1:
      bits = np.tile(bits, (images.shape[0], 1))
    if bits.shape != (images.shape[0], self.password_bits):
      raise ValueError(
        f"this checkpoint takes {self.password_bits}-bit passwords; got bits of shape {bits.shape}"
      )
    if not self.deterministic and images.shape[0] < 2:
      raise ValueError(
        "this checkpoint normalises with batch statistics (norm=batch_stats), which erase "
        "the password of a single image; calibrate it (python -m fit_jax.calibrate) or use a "
        "norm=batch checkpoint"
      )
    z = passwords.encode(bits, sign * self.scale)
    return np.asarray(self._apply(self.variables, images, z))

  def anonymize(self, images, password_bits):
    return self._run(images, password_bits, 1.0)

  def recover(self, images, password_bits):
    """G(images, -z): the inverse password is the complement of the bits."""
    return self._run(images, password_bits, -1.0)
