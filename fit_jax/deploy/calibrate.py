"""Running BatchNorm statistics for a generator trained without them
(the command: python -m fit_jax.calibrate).

The authors' generator normalises every call with the statistics of its own
batch (BatchNorm without running averages, 12 images per GPU), so a converted
reference checkpoint cannot transform one photo: alone, the image's constant
password channels are exactly what the first norm subtracts. This command
estimates the statistics that training saw. It makes train-mode passes over
real faces in groups of 12 with random per-sample passwords, making the
calls of a training iteration:

  A = G(x, z), A2 = G(x, z2), R = G(A, -z), W = G(A, w), W2 = G(A, w2)

(`--calls anonymize` makes only the first two). For each norm layer the
running mean and variance are those of all the values the groups
normalised: the mean of the group means, and the mean group variance plus
the variance of the group means. A large batch with batch statistics
computes nearly the same.

Faces are read as the photo tool's crop mode reads them (any image, resized
to --size). Give aligned face crops like those it will transform: a few
hundred are plenty (the estimate averages every pixel of every group).
Writes a release directory (fit_jax.release): float32 weights with the
statistics, and a model card that records the calibration. Nothing about the
faces is written.
"""

import dataclasses
import json
import os

import numpy as np
from flax import traverse_util

from fit_jax.data import photos
from fit_jax.deploy import compact_weights, inference, release
from fit_jax.runtime import atomic
from fit_jax.training import passwords

GROUP_SIZE = 12  # the reference's images per GPU: its norm groups
CALLS = {"training": ("A", "A2", "R", "W", "W2"), "anonymize": ("A", "A2")}


def read_faces(inputs: list[str], size: int) -> tuple[np.ndarray, list[tuple[str, str]]]:
  """[n, size, size, 3] in [-1, 1], and (path, reason) for each unreadable file."""
  faces, failures = [], []
  for path, _ in photos.collect_inputs(inputs):
    try:
      rgb = photos.read_rgb(path)
    except photos.ItemError as e:
      failures.append((path, str(e)))
      continue
    faces.append(photos.preprocess(rgb, size))
  stacked = np.stack(faces) if faces else np.zeros((0, size, size, 3), np.float32)
  return stacked, failures


def face_order(num_faces: int, seed: int) -> np.ndarray:
  """[groups, GROUP_SIZE] face indices: a shuffle, an incomplete last group
  left out (as the reference skipped an incomplete last batch)."""
  groups = num_faces // GROUP_SIZE
  order = np.random.default_rng(seed).permutation(num_faces)
  return order[: groups * GROUP_SIZE].reshape(groups, GROUP_SIZE)


def group_passwords(seed: int, group: int, num_bits: int) -> dict:
  """The per-sample passwords of one group, drawn as a training iteration
  draws them (passwords.sample_training_passwords)."""
  import jax  # noqa: PLC0415

  key = jax.random.fold_in(jax.random.PRNGKey(seed), group)
  return passwords.sample_training_passwords(key, GROUP_SIZE, num_bits)


def running_statistics(
  model, params: dict, faces: np.ndarray, calls: tuple[str, ...], scale: float = 1.0, seed: int = 0
) -> dict:
  """The `batch_stats` collection of `model` in norm="batch" mode, estimated
  from train-mode passes over `faces` in norm groups of GROUP_SIZE.

  Args:
    model: the generator (any norm mode; its parameters are `params`).
    faces: [n, S, S, 3] in [-1, 1]; n // GROUP_SIZE groups are used (the
      reference skipped an incomplete last batch too).
    calls: names from CALLS["training"] to make for each group.
    scale: the password scale (z = scale * (bits - 1/2)).
  """
  import jax  # noqa: PLC0415

  groups = len(faces) // GROUP_SIZE
  if groups == 0:
    raise ValueError(f"calibration needs at least {GROUP_SIZE} faces; got {len(faces)}")
  teacher = dataclasses.replace(model, norm="batch_stats", norm_group_size=GROUP_SIZE)

  @jax.jit
  def call(x, z):
    y, state = teacher.apply({"params": params}, x, z, train=True, mutable=["norm_moments"])
    return y, state["norm_moments"]

  order = face_order(len(faces), seed)
  sums: dict = {}
  for i, members in enumerate(order):
    x = faces[members]
    bits = group_passwords(seed, i, model.password_bits)
    code = {name: passwords.encode(b, scale) for name, b in bits.items()}
    anonymized, moments = call(x, code["anon"])
    recorded = [moments]
    inputs = {
      "A2": (x, code["anon2"]),
      "R": (anonymized, code["recover"]),
      "W": (anonymized, code["wrong"]),
      "W2": (anonymized, code["wrong2"]),
    }
    for name in calls[1:]:
      recorded.append(call(*inputs[name])[1])
    for moments in recorded:
      for layer, (mean, var) in _layer_moments(moments).items():
        # Sums over groups of the mean and of E[x^2] = var + mean^2.
        mean, var = np.asarray(mean, np.float64), np.asarray(var, np.float64)
        total = sums.setdefault(layer, np.zeros((3, mean.shape[-1])))
        total += np.stack(
          [mean.sum(axis=0), (var + mean * mean).sum(axis=0), np.full(mean.shape[-1], len(mean))]
        )
  stats = {}
  for layer, (mean_sum, square_sum, count) in sums.items():
    mean = mean_sum / count
    var = np.maximum(square_sum / count - mean * mean, 0.0)
    stats[layer + ("mean",)] = mean.astype(np.float32)
    stats[layer + ("var",)] = var.astype(np.float32)
  return traverse_util.unflatten_dict(stats)


def _layer_moments(moments: dict) -> dict:
  """{layer path: (group means [G, C], group variances [G, C])} of one call."""
  flat = traverse_util.flatten_dict(moments)
  return {
    path[:-1]: (flat[path][0], flat[path[:-1] + ("var",)][0]) for path in flat if path[-1] == "mean"
  }


def calibrated_card(model, size: int, calibration: dict) -> dict:
  """The model card of a calibrated converted checkpoint (no training config)."""
  card = release.card_of(
    {
      "model": {
        "password_bits": model.password_bits,
        "password_scale": 1.0,
        "norm": "batch",
        "generator": {
          "ngf": model.ngf,
          "num_downsampling": model.num_downsampling,
          "num_blocks": model.num_blocks,
        },
      },
      "data": {"image_size": size},
    },
    step=-1,
    mode="float32",
  )
  card["config"] = None
  card["calibration"] = calibration
  return card


def calibrate(
  checkpoint: str,
  faces_inputs: list[str],
  out: str,
  size: int = 128,
  calls: str = "training",
  seed: int = 0,
) -> tuple[dict, list[tuple[str, str]]]:
  """Writes the calibrated release; returns (its card, unreadable faces)."""
  if os.path.exists(out):
    raise FileExistsError(f"{out} exists; choose a new --out directory")
  model, variables, _ = inference.load_generator(checkpoint)
  if model.norm == "folded":
    raise ValueError(f"{checkpoint}: already has running statistics (its norms are folded)")
  inference.check_image_size(model, size)
  faces, failures = read_faces(faces_inputs, size)
  stats = running_statistics(model, variables["params"], faces, CALLS[calls], seed=seed)
  calibration = {
    "faces": int(len(faces) // GROUP_SIZE * GROUP_SIZE),
    "group_size": GROUP_SIZE,
    "calls": list(CALLS[calls]),
    "seed": seed,
  }
  card = calibrated_card(model, size, calibration)
  staging = out.rstrip("/") + ".tmp"
  os.makedirs(staging, exist_ok=False)
  compact_weights.save(
    os.path.join(staging, release.WEIGHTS),
    {"params": variables["params"], "batch_stats": stats},
    "float32",
  )
  atomic.write_text(os.path.join(staging, release.CARD), json.dumps(card, indent=1) + "\n")
  os.replace(staging, out)
  return card, failures
