"""fit_jax keeps XLA:CPU's convolutions out of YNNPACK on import, unless told not to."""

import os
import subprocess
import sys

import pytest

from fit_jax.runtime import xla_cpu_flags

MEASURED = xla_cpu_flags.MEASURED_JAXLIB[0]


def test_flag_is_appended_to_the_users_flags():
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
  assert xla_cpu_flags.apply(env, MEASURED)
  assert env["XLA_FLAGS"].split() == [
    "--xla_force_host_platform_device_count=8",
    f"{xla_cpu_flags.FLAG}={xla_cpu_flags.VALUE}",
  ]
  assert not xla_cpu_flags.apply(env, MEASURED)  # once only
  empty = {}
  assert xla_cpu_flags.apply(empty, MEASURED)
  assert empty["XLA_FLAGS"] == f"{xla_cpu_flags.FLAG}={xla_cpu_flags.VALUE}"


def test_jaxlib_0_11_also_keeps_reductions_out_of_ynnpack():
  # Its YNNPACK reductions gave a wrong loss and NaN gradients (the module).
  env = {}
  assert xla_cpu_flags.apply(env, (0, 11))
  assert env["XLA_FLAGS"] == f"{xla_cpu_flags.FLAG}=-individual_convolution,-reduce"


@pytest.mark.parametrize(
  "env, version",
  [
    ({"XLA_FLAGS": f"{xla_cpu_flags.FLAG}=individual_dot"}, MEASURED),  # the user's own choice
    ({xla_cpu_flags.OPT_OUT: "1"}, MEASURED),
    ({}, (0, 9)),  # an unknown flag would abort a jaxlib that lacks it
    ({}, (1, 0)),
  ],
)
def test_flag_is_left_alone(env, version):
  before = dict(env)
  assert not xla_cpu_flags.apply(env, version)
  assert env == before


_PROGRAM = """
from fit_jax.runtime import xla_cpu_flags
xla_cpu_flags.apply()
import jax, jax.numpy as jnp
x, w = jnp.ones((2, 32, 32, 64)), jnp.ones((3, 3, 64, 64))  # big enough for YNNPACK
conv = jax.jit(lambda x, w: jax.lax.conv_general_dilated(
  x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))
print("ynn" if "__ynn_fusion" in conv.lower(x, w).compile().as_text() else "xla")
"""


@pytest.mark.parametrize("keep", ["", "1"])
def test_applied_flags_compile_cpu_convolutions_without_ynnpack(keep):
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  env.pop("JAX_COMPILATION_CACHE_DIR", None)
  env[xla_cpu_flags.OPT_OUT] = keep
  out = subprocess.run(
    [sys.executable, "-c", _PROGRAM], env=env, capture_output=True, text=True, check=True
  ).stdout.split()
  # Opting out keeps jaxlib's default, which is YNNPACK here (the test would
  # show if a jaxlib stopped using it, and this module could go).
  assert out[-1] == ("ynn" if keep else "xla")


def test_importing_fit_jax_changes_no_setting():
  """No import-time side effects: the package, its subpackages and the
  commands' modules leave XLA_FLAGS as they found it."""
  program = (
    "import os; before = os.environ.get('XLA_FLAGS'); "
    "import fit_jax, fit_jax.training.train, fit_jax.deploy.inference, fit_jax.main, "
    "fit_jax.photo_cli; assert os.environ.get('XLA_FLAGS') == before; print('same')"
  )
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_dump_to=/dev/null")
  out = subprocess.run([sys.executable, "-c", program], env=env, capture_output=True, text=True)
  assert out.returncode == 0 and out.stdout.strip() == "same", out.stderr[-2000:]
