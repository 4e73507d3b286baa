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

from fit_jax.runtime import xla_cpu_flags  # noqa: E402

# As every fit_jax command does before JAX starts: CPU convolutions stay in
# XLA (the tests' subprocesses inherit the flag).
xla_cpu_flags.apply()

import numpy as np  # noqa: E402
import pytest  # noqa: E402

SHARED = pathlib.Path(__file__).resolve().parents[2] / "shared"
# The real faces (LFW); CI always has them beside the clone.
DATA = pathlib.Path(os.environ.get("FIT_DATA", SHARED / "data"))


def pytest_configure(config):
  config.addinivalue_line("markers", "real_faces: needs the LFW images under FIT_DATA")


# Slow modules run first, in this order. The two that start together compile
# disjoint programs (the photo CLI's: the tiny config on 8 devices; the
# interrupted runs': their own cache), and each later one finds the programs
# it shares in the persistent cache instead of compiling them a second time at
# the same moment (the notebooks train the photo CLI's tiny config).
SLOW_ORDER = ("photo_cli_test", "interrupted_runs_test", "train_test", "notebooks_test")


def _schedule(item) -> tuple[bool, int]:
  if "slow" not in item.keywords:
    return True, 0
  name = item.path.stem
  return False, SLOW_ORDER.index(name) if name in SLOW_ORDER else len(SLOW_ORDER)


def pytest_collection_modifyitems(config, items):
  """Modules marked `slow` come first (in SLOW_ORDER); tests of real faces
  are skipped, saying why, where the faces are absent (a bare clone; CI
  always has them).

  `make test` runs files on 2 workers in this order (`--dist loadfile
  --no-loadscope-reorder`): a slow module starts at once on one worker while
  the other takes the many short ones, so both finish together.
  """
  items.sort(key=_schedule)  # stable: a module's tests stay in order
  if DATA.is_dir():
    return
  skip = pytest.mark.skip(
    reason=f"real faces not found at {DATA}: set FIT_DATA to the "
    "folder holding lfw_subset/ and lfw_rest/"
  )
  for item in items:
    if "real_faces" in item.keywords:
      item.add_marker(skip)


@pytest.fixture(scope="session")
def golden():
  """Values computed by the authors' code (beside the repository, as in CI)."""
  path = SHARED / "golden" / "reference_golden.npz"
  if not path.exists():
    pytest.skip(f"golden values of the authors' code not found at {path}")
  return dict(np.load(path))
