"""Calibrated running statistics let a reference (batch-statistics) generator
transform one photo at a time, as it behaves on large batches."""

import dataclasses
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fit_jax.conversion import pretrained
from fit_jax.deploy import calibrate, inference, release
from fit_jax.models import generator as generator_lib
from fit_jax.training import passwords

from .. import commands
from ..conftest import DATA

pytestmark = pytest.mark.real_faces

LFW = DATA / "lfw_subset" / "lfw"
SIZE = 32


@pytest.fixture(scope="module")
def reference_checkpoint(tmp_path_factory):
  """A random-weight generator saved as the converter saves the authors':
  params only, norm=batch_stats (no running statistics)."""
  model = generator_lib.Generator(ngf=8, num_blocks=2, norm="batch_stats")
  params = model.init(
    jax.random.PRNGKey(0), jnp.zeros((2, SIZE, SIZE, 3)), jnp.zeros((2, 16)), train=True
  )["params"]
  path = tmp_path_factory.mktemp("converted") / "generator"
  pretrained.save_variables(str(path), {"generator": {"params": params}})
  return path, model, params


def _faces():
  if not LFW.is_dir():
    pytest.skip(f"real faces not found at {LFW} (set FIT_DATA)")
  files = sorted(str(p) for p in LFW.glob("*/*.jpg"))
  np.random.default_rng(0).shuffle(files)
  return files


def test_per_image_outputs_match_large_batches(reference_checkpoint, tmp_path):
  """Calibrated on 240 faces, each image alone gives what a 480-image mixed
  batch gives with batch statistics, closer than the reference's own
  12-image groups do; running statistics left at their initial values do
  far worse."""
  path, model, params = reference_checkpoint
  files = _faces()
  out = tmp_path / "calibrated"
  card, failures = calibrate.calibrate(
    str(path), files[:240], str(out), size=SIZE, calls="anonymize"
  )
  assert not failures and card["calibration"]["faces"] == 240
  assert card["image_size"] == SIZE and card["norm"] == "batch"
  calibrated, variables, deterministic = inference.load_generator(str(out))
  assert deterministic
  transformer = inference.Transformer(calibrated, variables, deterministic)

  held, _ = calibrate.read_faces(files[240:720], SIZE)
  bits = np.random.default_rng(1).integers(0, 2, (len(held), 16))
  z = (bits - 0.5).astype(np.float32)
  whole_batch = np.asarray(
    dataclasses.replace(model, norm_group_size=0).apply({"params": params}, held, z, train=False)
  )
  groups_of_12 = np.asarray(
    dataclasses.replace(model, norm_group_size=12).apply({"params": params}, held, z, train=False)
  )
  one_by_one = np.concatenate(
    [transformer.anonymize(held[i : i + 1], bits[i]) for i in range(0, len(held), 7)]
  )
  reference = whole_batch[::7]
  initial = dataclasses.replace(model, norm="batch")
  stats = initial.init(jax.random.PRNGKey(0), held[:2], z[:2], train=True)["batch_stats"]
  uncalibrated = np.asarray(
    initial.apply({"params": params, "batch_stats": stats}, held[::7], z[::7], train=False)
  )

  def error(outputs):
    return float(np.abs(outputs - reference).mean())

  # Measured: 0.046 calibrated, 0.14 for groups of 12, 0.24 uncalibrated
  # (outputs have a standard deviation of 0.28).
  assert error(one_by_one) < 0.07
  assert error(one_by_one) < 0.6 * error(groups_of_12[::7])
  assert error(one_by_one) < 0.3 * error(uncalibrated)


def test_running_statistics_are_the_pooled_group_moments(reference_checkpoint):
  """With one layer's worth of arithmetic checked directly: the first norm's
  statistics are the mean and variance of all the values the groups saw."""
  _, model, params = reference_checkpoint
  faces = np.random.default_rng(2).uniform(-1, 1, (36, SIZE, SIZE, 3)).astype(np.float32)
  stats = calibrate.running_statistics(model, params, faces, ("A",), seed=3)
  # Recompute norm_in's input (the 7x7 convolution of the image and the
  # constant password channels) for the same groups and passwords.
  kernel = params["conv_in"]
  values = []
  for group, members in enumerate(calibrate.face_order(36, seed=3)):
    z = passwords.encode(calibrate.group_passwords(3, group, 16)["anon"])
    padded = jnp.pad(faces[members], ((0, 0), (3, 3), (3, 3), (0, 0)), mode="reflect")
    image_part = jax.lax.conv_general_dilated(
      padded, kernel[:, :, :3], (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    password_part = z @ kernel[:, :, 3:].sum(axis=(0, 1))
    values.append(np.asarray(image_part + password_part[:, None, None, :]))
  pre_norm = np.concatenate(values).reshape(-1, kernel.shape[-1])
  np.testing.assert_allclose(stats["norm_in"]["mean"], pre_norm.mean(0), atol=1e-5)
  np.testing.assert_allclose(stats["norm_in"]["var"], pre_norm.var(0), rtol=1e-4, atol=1e-6)


def test_the_command_makes_a_converted_checkpoint_work_on_one_photo(reference_checkpoint, tmp_path):
  path, _, _ = reference_checkpoint
  files = _faces()
  photo = files[500]
  refused = commands.run(
    "anonymize",
    f"--checkpoint={path}",
    "--password=0x1234",
    f"--out={tmp_path / 'a0'}",
    f"--size={SIZE}",
    photo,
  )
  assert refused.returncode != 0 and "python -m fit_jax.calibrate" in refused.stderr
  faces = tmp_path / "faces"
  faces.mkdir()
  for i, source in enumerate(files[:26]):
    (faces / f"{i}.jpg").write_bytes(pathlib.Path(source).read_bytes())
  (faces / "broken.jpg").write_bytes(b"not a jpeg")
  done = commands.run(
    "calibrate",
    f"--checkpoint={path}",
    f"--faces={faces}",
    f"--out={tmp_path / 'release'}",
    f"--size={SIZE}",
  )
  assert done.returncode == 0, done.stderr[-2000:]
  assert "skipped" in done.stdout and "broken.jpg" in done.stdout
  assert "calibrated on 24 faces (2 groups of 12, calls A, A2, R, W, W2)" in done.stdout
  card = release.load_card(str(tmp_path / "release"))
  assert card["calibration"]["calls"] == ["A", "A2", "R", "W", "W2"]
  # The card's size is used without --size, on a single photo.
  single = commands.run(
    "anonymize",
    f"--checkpoint={tmp_path / 'release'}",
    "--password=0x1234",
    f"--out={tmp_path / 'a1'}",
    photo,
  )
  assert single.returncode == 0, single.stderr[-2000:]
  assert "1 written" in single.stdout
  again = commands.run(
    "calibrate", f"--checkpoint={path}", f"--faces={faces}", f"--out={tmp_path / 'release'}"
  )
  assert again.returncode != 0 and "exists" in again.stderr
