"""Compact weight files: exact float32, bounded bf16 and int8, parts."""

import os

import numpy as np
import pytest

from fit_jax.deploy import compact_weights


def _tree(seed=0):
  rng = np.random.default_rng(seed)
  return {
    "conv": {
      "kernel": rng.normal(size=(3, 3, 8, 16)).astype(np.float32),
      "bias": rng.normal(size=(16,)).astype(np.float32),
    },
    "dense": {"kernel": (rng.normal(size=(32, 4)) * [1e-3, 1.0, 10.0, 0.0]).astype(np.float32)},
    "norm": {"scale": np.ones(16, np.float32)},
  }


def test_float32_round_trip_is_exact(tmp_path):
  tree = _tree()
  path = str(tmp_path / "w.npz")
  assert compact_weights.save(path, tree, "float32") == [path]
  loaded = compact_weights.load(path)
  for key, value in compact_weights.flatten(tree).items():
    np.testing.assert_array_equal(compact_weights.flatten(loaded)[key], value)
  assert compact_weights.stored_mode(path) == "float32"


@pytest.mark.parametrize("mode, bound", [("bfloat16", 2**-8), ("int8", 0.5 / 127)])
def test_compact_modes_are_bounded_per_channel(tmp_path, mode, bound):
  tree = _tree()
  path = str(tmp_path / "w.npz")
  compact_weights.save(path, tree, mode)
  loaded = compact_weights.flatten(compact_weights.load(path))
  for key, value in compact_weights.flatten(tree).items():
    got = loaded[key]
    assert got.dtype == np.float32 and got.shape == value.shape
    if value.ndim < 2:  # vectors stay exact
      np.testing.assert_array_equal(got, value)
      continue
    error = np.abs(got - value)
    if mode == "bfloat16":  # relative to each value
      assert np.all(error <= bound * np.abs(value) + 1e-30), key
    else:  # relative to each output channel's largest value
      channel_max = np.max(np.abs(value), axis=tuple(range(value.ndim - 1)))
      assert np.all(error <= bound * channel_max + 1e-12), key
  # The tiny-valued channel keeps its precision: int8 scales per channel.
  small = compact_weights.flatten(tree)["dense/kernel"][:, 0]
  assert np.max(np.abs(loaded["dense/kernel"][:, 0] - small)) < 1e-3 * 0.01
  assert compact_weights.stored_mode(path) == mode


def test_bf16_rounds_to_nearest_even():
  x = np.array([1.0 + 2**-8, 1.0 + 3 * 2**-8, -2.5, 1e-30], np.float32)
  got = compact_weights.decode(compact_weights.encode({"k": x[None]}, "bfloat16"))["k"][0]
  np.testing.assert_array_equal(got[:3], [1.0, 1.0 + 2**-6, -2.5])


def test_parts_split_and_reassemble(tmp_path):
  tree = _tree()
  path = str(tmp_path / "w.npz")
  written = compact_weights.save(path, tree, "int8", max_part_bytes=300)
  assert len(written) > 1 and not os.path.exists(path)
  assert all(os.path.basename(w).startswith("w-0000") for w in written)
  loaded = compact_weights.flatten(compact_weights.load(path))
  assert loaded.keys() == compact_weights.flatten(tree).keys()
  os.remove(written[-1])
  with pytest.raises(FileNotFoundError, match=f"{len(written) - 1} of its {len(written)} parts"):
    compact_weights.load(path)


def test_bad_inputs_are_named(tmp_path):
  with pytest.raises(ValueError, match="mode 'int4'"):
    compact_weights.save(str(tmp_path / "w.npz"), _tree(), "int4")
  with pytest.raises(ValueError, match="conv/kernel: non-finite"):
    tree = _tree()
    tree["conv"]["kernel"][0, 0, 0, 0] = np.nan
    compact_weights.save(str(tmp_path / "w.npz"), tree, "int8")
  with pytest.raises(FileNotFoundError, match="no compact weights file"):
    compact_weights.load(str(tmp_path / "missing.npz"))
  (tmp_path / "junk.npz").write_bytes(b"not a zip")
  with pytest.raises(ValueError, match="junk.npz: not a compact weights file"):
    compact_weights.load(str(tmp_path / "junk.npz"))
