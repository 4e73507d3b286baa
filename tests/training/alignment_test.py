"""Alignment: golden theta and crop, known warps, gradients."""

import jax
import jax.numpy as jnp
import numpy as np

from fit_jax.training import alignment


def test_golden_theta_and_crop(golden):
  theta = alignment.similarity_theta(jnp.asarray(golden["align_landmarks_250"]))
  np.testing.assert_allclose(theta, golden["align_theta"], rtol=1e-5, atol=1e-6)
  image = golden["align_image_nchw"].transpose(0, 2, 3, 1)
  crop = alignment.warp_to_crop(jnp.asarray(image), jnp.asarray(golden["align_theta"]))
  expected = golden["align_crop_bgr_nchw"].transpose(0, 2, 3, 1)
  assert crop.shape == (6, 112, 96, 3)
  np.testing.assert_allclose(crop, expected, rtol=1e-5, atol=1e-5)


def test_recovers_known_similarity():
  # Landmarks made by a known similarity of the template are fitted exactly.
  tpl = np.asarray(alignment.TEMPLATE) / [48.0, 56.0] - 1.0
  scale, angle, shift = 0.6, 0.3, np.array([0.05, -0.1])
  rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
  src = tpl @ rot.T + shift
  landmarks = (src + 1.0) * 125.0
  theta = np.asarray(alignment.similarity_theta(jnp.asarray(landmarks[None], jnp.float32)))[0]
  np.testing.assert_allclose(theta[:, :2], rot, atol=1e-5)
  np.testing.assert_allclose(theta[:, 2], shift, atol=1e-5)


def test_identity_warp_and_zero_padding():
  image = jax.random.uniform(jax.random.PRNGKey(0), (1, 112, 96, 3))
  identity = jnp.array([[[1.0, 0, 0], [0, 1.0, 0]]])
  out = alignment.bilinear_sample(image, alignment.crop_grid(identity))
  np.testing.assert_allclose(out, image, atol=1e-4)  # linspace rounding
  far = jnp.array([[[1.0, 0, 5.0], [0, 1.0, 0]]])  # shifted fully outside
  assert float(jnp.abs(alignment.bilinear_sample(image, alignment.crop_grid(far))).max()) == 0.0


def test_gradients_flow_to_images():
  image = jax.random.uniform(jax.random.PRNGKey(1), (2, 128, 128, 3))
  theta = alignment.similarity_theta(
    jnp.asarray(
      np.tile(
        [[97.0, 114.0], [142.0, 127.0], [110.0, 147.0], [100.0, 180.0], [140.0, 176.0]], (2, 1, 1)
      ),
      jnp.float32,
    )
  )
  grad = jax.grad(lambda x: jnp.sum(alignment.warp_to_crop(x, theta) ** 2))(image)
  assert float(jnp.abs(grad).sum()) > 0
  # Pixels far outside the face crop get no gradient.
  assert float(jnp.abs(grad[:, :5, :5]).sum()) == 0.0
