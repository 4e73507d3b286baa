"""Saving and loading converted or pretrained network variables (no torch).

A converted checkpoint is an orbax PyTree directory holding
{module: {'params': ...}} for some of `generator`, `discriminator`,
`password_head`, `sphereface`. Training uses it as initialisation
(`config.train.init_from`, `config.model.sphereface.pretrained`); inference
loads the generator from it.
"""

import os

import numpy as np
import orbax.checkpoint as ocp

MODULES = ("generator", "discriminator", "password_head", "sphereface", "facenet")


def save_variables(directory: str, variables: dict) -> None:
  """Writes variables atomically (orbax finalises a temporary directory)."""
  unknown = sorted(set(variables) - set(MODULES))
  if unknown:
    raise ValueError(f"unknown modules {unknown}; expected some of {MODULES}")
  path = os.path.abspath(os.path.expanduser(directory))
  if os.path.exists(path):
    raise FileExistsError(f"{path} exists; choose a new --out directory")
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(path, variables)


def restore_numpy(path: str) -> dict:
  """Any orbax PyTree checkpoint as nested dicts of host numpy arrays.

  Restoring as numpy ignores the shardings it was saved with, so a
  checkpoint written on 8 devices (or a pod) loads on a laptop.
  """
  import jax  # noqa: PLC0415

  with ocp.PyTreeCheckpointer() as checkpointer:
    metadata = checkpointer.metadata(path)
    tree = getattr(metadata, "item_metadata", None) or getattr(metadata, "tree", metadata)
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    restored = checkpointer.restore(path, args=ocp.args.PyTreeRestore(restore_args=restore_args))
  return _to_numpy(restored)


def load_variables(directory: str) -> dict:
  """Reads variables written by save_variables, as numpy arrays."""
  path = os.path.abspath(os.path.expanduser(directory))
  if not os.path.isdir(path):
    raise FileNotFoundError(f"{path}: no converted checkpoint directory")
  return restore_numpy(path)


def restore_checkpoint(path: str) -> tuple[str, dict]:
  """Numpy tree of the newest checkpoint under a training workdir, its
  `checkpoints/` folder, one step, or a converted directory.

  Returns:
    (the orbax directory restored, the tree).

  Raises:
    FileNotFoundError / ValueError: one line naming the path.
  """
  path = os.path.abspath(os.path.expanduser(path))
  if not os.path.isdir(path):
    raise FileNotFoundError(f"{path}: no checkpoint directory")
  if os.path.isdir(os.path.join(path, "checkpoints")):
    path = os.path.join(path, "checkpoints")
  steps = sorted((int(d) for d in os.listdir(path) if d.isdigit()), reverse=True)
  if steps:
    path = os.path.join(path, str(steps[0]))
  if os.path.isdir(os.path.join(path, "default")):
    path = os.path.join(path, "default")
  try:
    return path, restore_numpy(path)
  except Exception as e:
    raise ValueError(f"{path}: not a fit_jax checkpoint ({type(e).__name__})") from None


def _to_numpy(tree):
  if isinstance(tree, dict):
    return {k: _to_numpy(v) for k, v in tree.items()}
  return np.asarray(tree)
