"""The device path imports without TensorFlow, TFDS, clu or grain.

Accelerator images often lack them (the project's GPU image does), and the
model, update steps, inference and benchmark need none of them.
"""

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]

_BLOCK_AND_IMPORT = """
import sys
for name in ("tensorflow", "tensorflow_datasets", "clu", "grain"):
  sys.modules[name] = None  # any import of them now raises ImportError
import benchmarks.benchmark, fit_jax.deploy.inference, fit_jax.models, fit_jax.training.train
import benchmarks.profile_summary, fit_jax.conversion.pretrained, fit_jax.training.train_state
from configs import tiny
from fit_jax import models
from fit_jax.training import train_state
import jax
config = tiny.get_config()
m = models.build_models(config.model)
train_state.create_train_state(config, m, jax.random.PRNGKey(0), train_state.make_mesh())
print("ok")
"""


def test_model_steps_and_benchmark_import_without_tf_clu_grain():
  done = subprocess.run(
    [sys.executable, "-c", _BLOCK_AND_IMPORT], cwd=ROOT, capture_output=True, text=True, timeout=300
  )
  assert done.returncode == 0, done.stderr[-2000:]
  assert done.stdout.strip().endswith("ok")
