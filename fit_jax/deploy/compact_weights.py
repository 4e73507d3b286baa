"""Network weights in compact .npz files: bfloat16 or int8, split into parts.

A compact file holds one nested dict of arrays (e.g. FaceNet's params, or a
generator's params and batch_stats), flattened to '/'-joined keys. It needs
only numpy to read, so it travels to machines without TensorFlow or orbax
and fits a size limit:
- `float32`: exact;
- `bfloat16`: each value rounded to bf16 (stored as its upper 16 bits);
- `int8`: each array of rank >= 2 (convolution and dense kernels) quantized
  symmetrically per output channel (its last axis), scale = max|w| / 127.

Vectors (biases, norm scales and statistics) always stay float32: they are a
small part of the bytes and the most sensitive to rounding. Loading returns
float32 arrays whatever the stored form.

A tree larger than `max_part_bytes` is written as `NAME-00001-of-0000K.npz`
parts (whole arrays per part); `load` takes the plain name and finds them.
"""

import glob
import os
import re

import numpy as np

from fit_jax.runtime import atomic

MODES = ("float32", "bfloat16", "int8")
_SUFFIXES = {"f32": "float32", "bf16": "bfloat16", "q8": "int8"}


def flatten(tree: dict, prefix: str = "") -> dict[str, np.ndarray]:
  """{'a/b/kernel': array} of a nested dict."""
  flat = {}
  for key, value in tree.items():
    if "/" in str(key) or ":" in str(key):
      raise ValueError(f"key {key!r} under {prefix or '/'} contains '/' or ':'")
    path = f"{prefix}/{key}" if prefix else str(key)
    if isinstance(value, dict):
      flat.update(flatten(value, path))
    else:
      flat[path] = np.asarray(value)
  return flat


def unflatten(flat: dict[str, np.ndarray]) -> dict:
  tree: dict = {}
  for path, value in flat.items():
    *parents, leaf = path.split("/")
    node = tree
    for name in parents:
      node = node.setdefault(name, {})
    node[leaf] = value
  return tree


def _bf16_bits(x: np.ndarray) -> np.ndarray:
  """float32 -> the upper 16 bits of its nearest bfloat16 (ties to even)."""
  bits = np.ascontiguousarray(x, np.float32).view(np.uint32)
  rounding = ((bits >> 16) & 1) + np.uint32(0x7FFF)
  return ((bits + rounding) >> 16).astype(np.uint16)


def _from_bf16_bits(bits: np.ndarray) -> np.ndarray:
  return (bits.astype(np.uint32) << 16).view(np.float32)


def encode(flat: dict[str, np.ndarray], mode: str) -> dict[str, np.ndarray]:
  """Stored arrays of a flat tree: key 'path:f32', 'path:bf16', or
  'path:q8' with its per-channel 'path:scale'."""
  if mode not in MODES:
    raise ValueError(f"weights mode {mode!r} is not one of {MODES}")
  stored = {}
  for path, value in flat.items():
    value = np.asarray(value, np.float32)
    if not np.all(np.isfinite(value)):
      raise ValueError(f"{path}: non-finite weights cannot be stored")
    if value.ndim < 2 or mode == "float32":
      stored[f"{path}:f32"] = value
    elif mode == "bfloat16":
      stored[f"{path}:bf16"] = _bf16_bits(value)
    else:
      axes = tuple(range(value.ndim - 1))
      scale = np.max(np.abs(value), axis=axes) / 127.0
      scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
      stored[f"{path}:q8"] = np.clip(np.round(value / scale), -127, 127).astype(np.int8)
      stored[f"{path}:scale"] = scale
  return stored


def decode(stored: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """The float32 flat tree of `encode`'s arrays."""
  flat = {}
  for key, value in stored.items():
    path, _, kind = key.rpartition(":")
    if kind == "f32":
      flat[path] = np.asarray(value, np.float32)
    elif kind == "bf16":
      flat[path] = _from_bf16_bits(value)
    elif kind == "q8":
      flat[path] = value.astype(np.float32) * stored[f"{path}:scale"]
    elif kind != "scale":
      raise ValueError(f"unknown stored array {key!r}")
  return flat


def _npz_bytes(arrays: dict[str, np.ndarray]) -> int:
  return sum(a.nbytes for a in arrays.values())


def save(path: str, tree: dict, mode: str, max_part_bytes: int | None = None) -> list[str]:
  """Writes `tree` compactly to `path` (.npz), or to parts of at most
  `max_part_bytes` of array data each. Returns the files written."""
  if not path.endswith(".npz"):
    raise ValueError(f"{path}: compact weights are written to a .npz file")
  stored = encode(flatten(tree), mode)
  parts: list[dict[str, np.ndarray]] = [{}]
  for key in sorted(stored):
    # An int8 kernel and its scale stay in one part.
    if key.endswith(":scale"):
      continue
    group = {key: stored[key]}
    if key.endswith(":q8"):
      group[key[:-3] + ":scale"] = stored[key[:-3] + ":scale"]
    if (
      max_part_bytes and parts[-1] and (_npz_bytes(parts[-1]) + _npz_bytes(group) > max_part_bytes)
    ):
      parts.append({})
    parts[-1].update(group)
  stem = path[:-4]
  names = (
    [path]
    if len(parts) == 1
    else [f"{stem}-{i + 1:05d}-of-{len(parts):05d}.npz" for i in range(len(parts))]
  )
  for name, arrays in zip(names, parts):
    atomic.write_npz(name, arrays)
  return names


def files(path: str) -> list[str]:
  """The file or parts that hold the weights saved under `path`."""
  if os.path.isfile(path):
    return [path]
  stem = glob.escape(path[:-4] if path.endswith(".npz") else path)
  parts = sorted(glob.glob(f"{stem}-[0-9][0-9][0-9][0-9][0-9]-of-[0-9][0-9][0-9][0-9][0-9].npz"))
  if not parts:
    raise FileNotFoundError(f"{path}: no compact weights file (nor its parts)")
  total = int(re.search(r"-of-(\d+)\.npz$", parts[0]).group(1))
  if len(parts) != total:
    raise FileNotFoundError(f"{path}: {len(parts)} of its {total} parts found")
  return parts


def stored_mode(path: str) -> str:
  """The mode the kernels of `path` were saved in."""
  kinds = set()
  for name in files(path):
    with np.load(name, allow_pickle=False) as npz:
      kinds.update(k.rpartition(":")[2] for k in npz.files)
  for kind in ("q8", "bf16"):
    if kind in kinds:
      return _SUFFIXES[kind]
  return "float32"


def load(path: str) -> dict:
  """The nested float32 tree saved under `path` (a file or its parts)."""
  stored = {}
  for name in files(path):
    try:
      with np.load(name, allow_pickle=False) as npz:
        stored.update({k: npz[k] for k in npz.files})
    except (OSError, ValueError) as e:
      raise ValueError(f"{name}: not a compact weights file ({e})") from None
  return unflatten(decode(stored))
