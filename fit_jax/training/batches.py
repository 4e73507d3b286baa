"""What a training batch is.

A batch is {"image": float32 [B, S, S, 3] in [-1, 1], "label": int32 [B]
identities, "landmarks": float32 [B, 5, 2] five points in the
data.landmark_frame square}, as the input pipeline yields it.
"""

import jax
import numpy as np


def random_batch(config, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
  """A random training batch with plausible landmarks (never zeros)."""
  rng = np.random.default_rng(seed)
  size = config.data.image_size
  frame = config.data.landmark_frame
  template = np.array([[30.3, 51.7], [65.5, 51.5], [48.0, 71.7], [33.5, 92.4], [62.7, 92.2]])
  landmarks = (template - [48, 56]) * frame / 250 + frame / 2
  return {
    "image": rng.uniform(-1, 1, (batch, size, size, 3)).astype(np.float32),
    "label": rng.integers(0, config.model.sphereface.num_classes, batch).astype(np.int32),
    "landmarks": (landmarks + rng.normal(0, frame / 100, (batch, 5, 2))).astype(np.float32),
  }


def check_batch(batch, config, num_devices: int) -> None:
  """Validates a host batch before tracing; one clear line per problem."""
  size = config.data.image_size
  required = {"image": None, "label": None, "landmarks": None}
  missing = [k for k in required if k not in batch]
  if missing:
    raise ValueError(f"batch is missing {missing}; it needs image, label, landmarks")
  image, label, lm = batch["image"], batch["label"], batch["landmarks"]
  b = image.shape[0]
  if image.ndim != 4 or tuple(image.shape[1:]) != (size, size, 3):
    raise ValueError(
      f"batch['image'] has shape {tuple(image.shape)}; expected [B, {size}, {size}, 3]"
    )
  if image.dtype != np.float32:
    raise ValueError(f"batch['image'] has dtype {image.dtype}; expected float32 in [-1, 1]")
  if tuple(label.shape) != (b,) or not np.issubdtype(label.dtype, np.integer):
    raise ValueError(f"batch['label'] must be int [{b}]; got {label.dtype} {tuple(label.shape)}")
  if tuple(lm.shape) != (b, 5, 2):
    raise ValueError(f"batch['landmarks'] has shape {tuple(lm.shape)}; expected [{b}, 5, 2]")
  if b % num_devices:
    raise ValueError(f"batch size {b} is not divisible by the {num_devices} devices")
  if isinstance(image, np.ndarray):
    lo, hi = float(image.min()), float(image.max())
    if lo < -1.0 - 1e-6 or hi > 1.0 + 1e-6:
      raise ValueError(f"batch['image'] values span [{lo:.3g}, {hi:.3g}]; expected [-1, 1]")
    classes = config.model.sphereface.num_classes
    if label.min() < 0 or label.max() >= classes:
      raise ValueError(
        f"batch['label'] spans [{label.min()}, {label.max()}]; the A-Softmax head has {classes} classes"
      )


def place(batch, config, mesh, sharding) -> dict[str, jax.Array]:
  """Validates a host batch and places it on the mesh.

  Single process: `batch` is the global batch. Multi-host: it is this
  process's contiguous slice, and the global array is assembled with
  jax.make_array_from_process_local_data.
  """
  processes = jax.process_count()
  check_batch(batch, config, mesh.size // processes)
  keys = ("image", "label", "landmarks")
  if processes == 1:
    return {k: jax.device_put(np.asarray(batch[k]), sharding) for k in keys}
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(batch[k])) for k in keys}
