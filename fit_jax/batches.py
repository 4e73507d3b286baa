"""What a training batch is.

A batch is {"image": float32 [B, S, S, 3] in [-1, 1], "label": int32 [B]
identities, "landmarks": float32 [B, 5, 2] five points in the
data.landmark_frame square}, as the input pipeline yields it.
"""

import numpy as np


def random_batch(config, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
  """A random training batch with plausible landmarks (never zeros)."""
  rng = np.random.default_rng(seed)
  size = config.data.image_size
  frame = config.data.landmark_frame
  template = np.array(
    [[30.3, 51.7], [65.5, 51.5], [48.0, 71.7], [33.5, 92.4], [62.7, 92.2]]
  )
  landmarks = (template - [48, 56]) * frame / 250 + frame / 2
  return {
    "image": rng.uniform(-1, 1, (batch, size, size, 3)).astype(np.float32),
    "label": rng.integers(0, config.model.sphereface.num_classes, batch).astype(np.int32),
    "landmarks": (landmarks + rng.normal(0, frame / 100, (batch, 5, 2))).astype(np.float32),
  }
