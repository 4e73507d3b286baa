"""Test set-up: CPU only, 8 fake devices so mesh code runs as on a pod slice."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["XLA_FLAGS"] = (
  os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Many tests (and the CLI subprocesses they start, which inherit this) compile
# the same tiny programs: a persistent XLA cache compiles each once.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", "/tmp/fit_jax_test_xla_cache")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

import pathlib  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

SHARED = pathlib.Path(__file__).resolve().parents[2] / "shared"
# The real faces (LFW); CI always has them beside the clone.
DATA = pathlib.Path(os.environ.get("FIT_DATA", SHARED / "data"))


@pytest.fixture(scope="session")
def golden():
  path = SHARED / "golden" / "reference_golden.npz"
  if not path.exists():
    pytest.fail(f"golden vectors missing: {path} (../shared must sit beside the repo)")
  return dict(np.load(path))
