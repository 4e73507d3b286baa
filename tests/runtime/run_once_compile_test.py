import types

import jax
import jax.numpy as jnp
import numpy as np

from fit_jax.models import generator as generator_lib
from fit_jax.runtime import run_once_compile


def test_level_zero_only_on_an_all_cpu_mesh():
  cpu = types.SimpleNamespace(platform="cpu")
  gpu = types.SimpleNamespace(platform="gpu")
  assert run_once_compile.options([cpu, cpu]) == run_once_compile.CPU_OPTIONS
  assert run_once_compile.options([gpu]) == {}
  assert run_once_compile.options([cpu, gpu]) == {}
  # Callers get a copy: changing it cannot change the next caller's options.
  run_once_compile.options([cpu])["xla_backend_optimization_level"] = 3
  assert run_once_compile.CPU_OPTIONS == {"xla_backend_optimization_level": 0}


def test_fresh_weights_match_the_default_compile_to_the_last_bit_of_rounding():
  model = generator_lib.Generator(ngf=4, num_blocks=1)

  def init(key):
    return model.init(key, jnp.zeros((1, 16, 16, 3)), jnp.zeros((1, 16)), train=True)

  key = jax.random.PRNGKey(3)
  cheap = run_once_compile.jit(init, jax.devices()[:1])(key)
  default = jax.jit(init)(key)
  assert jax.tree.structure(cheap) == jax.tree.structure(default)
  for a, b in zip(jax.tree.leaves(cheap), jax.tree.leaves(default)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=2.5e-7)
  # Not constant: the draws are real random weights, not zeros.
  assert float(jnp.std(cheap["params"]["conv_out"]["kernel"])) > 1e-3
