"""Loss functions against the authors' golden numbers and hand values."""

import jax.numpy as jnp
import numpy as np
import pytest

from fit_jax.models import sphereface
from fit_jax.training import losses


def test_angle_linear_golden(golden):
  module = sphereface.AngleLinear(golden["angle_weight"].shape[1])
  cos, phi = module.apply(
    {"params": {"weight": jnp.asarray(golden["angle_weight"])}}, jnp.asarray(golden["angle_x"])
  )
  np.testing.assert_allclose(cos, golden["angle_cos"], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(phi, golden["angle_phi"], rtol=1e-5, atol=1e-5)


def test_angle_softmax_golden_along_lambda_schedule(golden):
  for call, expected in zip(golden["angle_calls"], golden["angle_loss"]):
    value = losses.angle_softmax(
      jnp.asarray(golden["angle_cos"]),
      jnp.asarray(golden["angle_phi"]),
      jnp.asarray(golden["angle_labels"]),
      call,
    )
    np.testing.assert_allclose(value, expected, rtol=1e-5)


def test_angle_lambda_schedule():
  assert float(losses.angle_lambda(0)) == pytest.approx(1500.0)
  assert float(losses.angle_lambda(10)) == pytest.approx(750.0)
  assert float(losses.angle_lambda(10**6)) == pytest.approx(5.0)


def test_lsgan_golden(golden):
  maps = (jnp.asarray(golden["gan_fine"]), jnp.asarray(golden["gan_coarse"]))
  np.testing.assert_allclose(losses.lsgan(maps, 1.0), golden["gan_loss_real"], rtol=1e-5)
  np.testing.assert_allclose(losses.lsgan(maps, 0.0), golden["gan_loss_fake"], rtol=1e-5)


def test_feature_loss_golden_and_clamp(golden):
  np.testing.assert_allclose(
    losses.feature_dissimilarity(golden["feat_a"], golden["feat_b"]), golden["feat_loss"], rtol=1e-5
  )
  a = jnp.array([[1.0, 0.0], [1.0, 0.0]])
  b = jnp.array([[1.0, 1.0], [-1.0, 0.0]])  # cos 0.7071 and -1 (clamped to 0)
  assert float(losses.feature_dissimilarity(a, b)) == pytest.approx(np.sqrt(0.5) / 2, rel=1e-5)


def test_password_cross_entropy_and_accuracy_by_hand():
  logits = jnp.zeros((2, 4, 16)).at[:, :, 3].set(2.0)
  targets = jnp.full((2, 4), 3)
  per_head = -np.log(np.exp(2) / (np.exp(2) + 15))
  assert float(losses.password_cross_entropy(logits, targets)) == pytest.approx(
    4 * per_head, rel=1e-5
  )
  assert float(losses.password_accuracy(logits, targets)) == 1.0
  assert float(losses.password_accuracy(logits, targets.at[0, 0].set(2))) == pytest.approx(7 / 8)


def test_l1_and_bounded_negative():
  assert float(losses.l1(jnp.ones((2, 4, 4, 3)), jnp.zeros((2, 4, 4, 3)))) == 1.0
  assert float(losses.bounded_negative(jnp.float32(9.0), None)) == 9.0
  assert float(losses.bounded_negative(jnp.float32(9.0), 4.0)) == 4.0
