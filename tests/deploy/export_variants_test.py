"""Every generator variant (same function, other ops) exports: SavedModel and
builtin-ops TFLite with a run-time batch size, matching the JAX model."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fit_jax import models as models_lib
from fit_jax.data import pixels
from fit_jax.deploy import export, inference

VARIANTS = [
  {"rgb_conv": "space_to_depth", "rgb_block": 4},
  {"upsample": "phase_2x2"},
  {"folded_trunk_padding": "border"},
  # The GPU layout: all three together.
  {
    "upsample": "phase_2x2",
    "rgb_conv": "space_to_depth",
    "rgb_block": 4,
    "folded_trunk_padding": "border",
  },
]


def test_variants_export_to_tflite_with_parity(tmp_path):
  tf = pytest.importorskip("tensorflow")
  base = models_lib.Generator(ngf=8, num_blocks=1, norm="batch")
  size = 32
  rng = np.random.default_rng(0)
  images = rng.uniform(-1, 1, (3, size, size, 3)).astype(np.float32)
  bits = rng.integers(0, 2, (3, 16)).astype(np.float32)
  for i, variant in enumerate(VARIANTS):
    model = dataclasses.replace(base, **variant)
    variables = model.init(
      jax.random.PRNGKey(i), jnp.zeros((2, size, size, 3)), jnp.zeros((2, 16)), train=True
    )
    folded, folded_vars = inference.fold_batch_norm(model, variables)
    expected = folded.apply(folded_vars, images, bits - 0.5, train=False)
    saved, lite = tmp_path / f"sm{i}", tmp_path / f"m{i}.tflite"
    export.save_generator(folded, folded_vars, str(saved), size)
    export.export_tflite(folded, folded_vars, str(lite), size)
    loaded = tf.saved_model.load(str(saved))
    np.testing.assert_allclose(
      loaded.anonymize(images, bits).numpy(), expected, atol=1e-5, err_msg=str(variant)
    )
    # TFLite takes and gives 8-bit pixels: one rounding at each end.
    runner = tf.lite.Interpreter(model_path=str(lite)).get_signature_runner("anonymize")
    out = runner(images=pixels.to_uint8(images), password_bits=bits.astype(bool))["output_0"]
    reference = folded.apply(
      folded_vars, pixels.to_unit(pixels.to_uint8(images)), bits - 0.5, train=False
    )
    assert np.abs(out.astype(int) - pixels.to_uint8(np.asarray(reference))).max() <= 1, variant
