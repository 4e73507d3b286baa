"""The Colab notebooks run top to bottom (CPU) and are committed without outputs.

They train the tiny config (FIT_NOTEBOOK_CONFIG), whose programs the rest
of the suite compiles too; tests/configs_test.py traces the demo config's.
"""

import os
import pathlib

import nbformat
import pytest
from nbclient import NotebookClient

from fit_jax.deploy import release

ROOT = pathlib.Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def _run(name, env, tmp_path):
  path = ROOT / "colab" / name
  book = nbformat.read(path, as_version=4)
  for cell in book.cells:
    assert not cell.get("outputs") and not cell.get("execution_count"), f"{name}: clear outputs"
  saved = {k: os.environ.get(k) for k in env}
  os.environ.update(env)
  try:
    NotebookClient(
      book,
      timeout=600,
      kernel_name="python3",
      resources={"metadata": {"path": str(ROOT / "colab")}},
    ).execute()
  finally:
    for k, v in saved.items():
      os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
  return "".join(o.get("text", "") for c in book.cells for o in c.get("outputs", []))


def test_train_notebook(tmp_path):
  text = _run(
    "train.ipynb",
    {
      "FIT_NOTEBOOK_CONFIG": "tiny",
      "FIT_NOTEBOOK_STEPS": "2",
      "FIT_NOTEBOOK_WORKDIR": str(tmp_path / "w"),
    },
    tmp_path,
  )
  assert "trained to step 2" in text
  assert (tmp_path / "w" / "samples" / "step_0000002.png").exists()


def test_inference_notebook(tmp_path):
  """As on Colab without a shipped model: a short training, the bundled
  photo (its one face found by MTCNN), the card's size, the SavedModel."""
  pytest.importorskip("tensorflow")
  assert release.shipped_model() is None  # else the notebook would use it
  text = _run(
    "inference.ipynb",
    {
      "FIT_NOTEBOOK_CONFIG": "tiny",
      "FIT_NOTEBOOK_STEPS": "2",
      "FIT_NOTEBOOK_WORKDIR": str(tmp_path / "w"),
    },
    tmp_path,
  )
  assert (tmp_path / "w" / "checkpoints" / "2").is_dir()
  assert "64 px faces, 16-bit passwords; batch-independent outputs: True" in text
  assert "photo of 512x512 pixels" in text
  assert "1 face(s) to transform, 0 too small" in text
  assert "SavedModel vs JAX, max difference:" in text
  diff = float(text.split("SavedModel vs JAX, max difference:")[1].split()[0])
  assert diff < 1e-5
