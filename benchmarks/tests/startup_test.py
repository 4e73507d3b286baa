import jax
import jax.numpy as jnp

from benchmarks import startup
from configs import tiny
from fit_jax.training import train_state


def test_compile_timings_per_option_set():
  def draws(key):
    return jax.random.normal(key, (4, 3)) * jnp.arange(3.0)

  results = startup.time_compiles(
    draws,
    (jax.random.PRNGKey(0),),
    {"default": {}, "level0": {"xla_backend_optimization_level": 0}},
  )
  assert [r["options"] for r in results] == ["default", "level0"]
  assert results[1]["compiler_options"] == {"xla_backend_optimization_level": 0}
  assert all(r["compile_s"] >= 0 and r["run_s"] >= 0 for r in results)


def test_first_saves_on_eight_devices():
  # fit_jax's handler only: orbax's default compiles a slice per device and
  # parameter shape, seconds that the script exists to show.
  mesh = train_state.make_mesh()
  [result] = startup.bench_first_save(tiny.get_config(), mesh, handlers=("fit_jax",))
  assert result["handler"] == "fit_jax" and result["num_devices"] == 8
  assert result["first_s"] > 0 and result["second_s"] > 0
