"""generator_layout: each backend's entry is a valid layout of the same
parameters, "auto" resolves per backend, and bad names are one-line errors."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fit_jax import models as models_lib
from fit_jax.deploy import inference
from fit_jax.models import generator_layout


@pytest.mark.parametrize("platform", sorted(generator_layout.BY_PLATFORM))
def test_every_entry_computes_the_reference_layout_with_its_parameters(platform):
  """Each backend's entry builds, has the parameters of the reference's
  layout (resize_conv, conv) and computes the same outputs, folded too: a
  checkpoint moves between backends unchanged."""
  entry = generator_layout.BY_PLATFORM[platform]
  assert set(entry) == set(generator_layout.LAYOUT_OPTIONS)
  reference = models_lib.Generator(ngf=8, num_blocks=1, norm="batch")
  model = dataclasses.replace(reference, **entry)
  key = jax.random.PRNGKey(0)
  x = jax.random.uniform(key, (2, 32, 32, 3), minval=-1, maxval=1)
  z = jax.random.bernoulli(key, 0.5, (2, 16)) - 0.5
  variables = reference.init(key, x, z, train=True)
  assert jax.tree.map(jnp.shape, model.init(key, x, z, train=True)) == jax.tree.map(
    jnp.shape, variables
  )
  np.testing.assert_allclose(
    model.apply(variables, x, z, train=False),
    reference.apply(variables, x, z, train=False),
    atol=1e-5,
  )
  folded, folded_vars = inference.fold_batch_norm(model, variables)
  np.testing.assert_allclose(
    folded.apply(folded_vars, x, z, train=False),
    reference.apply(variables, x, z, train=False),
    atol=1e-5,
  )


def test_auto_none_and_absent_take_the_platforms_entry_named_values_stay():
  gpu = generator_layout.BY_PLATFORM["gpu"]
  assert generator_layout.resolve({}, "cuda") == gpu
  assert generator_layout.resolve({}, "rocm") == gpu
  assert (
    generator_layout.resolve({name: "auto" for name in generator_layout.LAYOUT_OPTIONS}, "gpu")
    == gpu
  )
  pinned = generator_layout.resolve(
    {"upsample": "phase_2x2", "rgb_block": 4, "rgb_conv": None}, "tpu"
  )
  tpu = generator_layout.BY_PLATFORM["tpu"]
  assert pinned == {**tpu, "upsample": "phase_2x2", "rgb_block": 4}
  # No platform: JAX's default backend (CPU in the tests).
  assert generator_layout.resolve({}) == generator_layout.BY_PLATFORM["cpu"]


def test_unknown_option_or_platform_is_one_clear_error():
  with pytest.raises(ValueError, match=r"unknown generator layout options \['upsampling'\]"):
    generator_layout.resolve({"upsampling": "phase_2x2"}, "cpu")
  with pytest.raises(ValueError, match="platform 'metal' is not one of"):
    generator_layout.resolve({}, "metal")


@pytest.mark.parametrize(
  "name, value, message",
  [
    ("upsample", "bilinear", "upsample 'bilinear' is not one of"),
    ("reflect_pad_ops", "scatter", "reflect_pad_ops 'scatter' is not one of"),
    ("rgb_conv", "fft", "rgb_conv 'fft' is not one of"),
    ("rgb_block", 0, "rgb_block must be at least 1; got 0"),
    ("folded_trunk_padding", "padded", "folded_trunk_padding 'padded' is not one of"),
  ],
)
def test_a_value_no_form_implements_is_refused_by_name(name, value, message):
  for entry in generator_layout.BY_PLATFORM.values():
    generator_layout.check(entry)
  bad = dict(generator_layout.BY_PLATFORM["cpu"], **{name: value})
  with pytest.raises(ValueError, match=message):
    generator_layout.check(bad)


def test_loaded_generators_compute_in_this_backends_layout():
  """The CLI, notebooks and export load a generator from its parameters:
  it takes the backend's layout, whatever layout trained it."""
  model = models_lib.Generator(ngf=8, num_blocks=1, norm="batch")
  x = jnp.zeros((1, 32, 32, 3))
  variables = model.init(jax.random.PRNGKey(0), x, jnp.zeros((1, 16)), train=True)
  loaded = inference.generator_from_params(variables["params"], variables["batch_stats"])
  assert generator_layout.of(loaded) == generator_layout.BY_PLATFORM["cpu"]
  assert (loaded.ngf, loaded.num_blocks, loaded.norm) == (8, 1, "batch")
