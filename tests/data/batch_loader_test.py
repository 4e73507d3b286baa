"""Batches built ahead by worker threads: the same batches, in order, errors intact."""

import os
import shutil

import numpy as np
import pytest

from fit_jax.data import batch_loader, input_pipeline

from ..conftest import DATA

pytestmark = pytest.mark.real_faces

LFW = DATA / "lfw_subset" / "lfw"
POINTS = "97 114 142 127 110 147 100 180 140 176"


def _source(tmp_path, extra_lines=(), on_bad_record="error"):
  """Real LFW faces of 6 people copied under tmp_path/root, plus extra lines."""
  root = tmp_path / "root"
  people = sorted(os.listdir(LFW))[:6]
  lines = []
  for person in people:
    (root / person).mkdir(parents=True, exist_ok=True)
    for name in sorted(os.listdir(LFW / person)):
      shutil.copy(LFW / person / name, root / person / name)
      lines.append(f"{person}/{name} {POINTS}")
  landmark_file = tmp_path / "lm.txt"
  landmark_file.write_text("".join(line + "\n" for line in [*lines, *extra_lines]))
  return input_pipeline.FaceFolder(
    str(root),
    str(landmark_file),
    with_labels=False,
    image_size=32,
    landmark_frame=250.0,
    num_classes=10,
    on_bad_record=on_bad_record,
  )


@pytest.mark.parametrize("num_workers", [0, 3])
def test_workers_give_the_sequential_batches_in_step_order(tmp_path, num_workers):
  source = _source(tmp_path)
  loaded = list(batch_loader.TrainBatches(source, 3, 11, 4, num_workers=num_workers))
  assert [step for step, _ in loaded] == list(range(3, 11))
  for step, batch in loaded:
    expected = source.batch(step, 4)
    for k in expected:
      np.testing.assert_array_equal(batch[k], expected[k])
  # A resumed run starting at step 7 sees the same batches.
  resumed = dict(batch_loader.TrainBatches(source, 7, 11, 4, num_workers=num_workers))
  np.testing.assert_array_equal(resumed[9]["image"], dict(loaded)[9]["image"])


def test_process_shards_are_slices_of_the_global_batch(tmp_path):
  source = _source(tmp_path)
  ((_, full),) = batch_loader.TrainBatches(source, 5, 6, 4, num_workers=2)
  ((_, half),) = batch_loader.TrainBatches(source, 5, 6, 4, shard=(1, 2), num_workers=2)
  np.testing.assert_array_equal(half["image"], full["image"][2:])


def test_bad_records_raise_the_named_error_or_are_all_counted(tmp_path):
  (tmp_path / "root" / "broken").mkdir(parents=True)
  (tmp_path / "root" / "broken" / "text.jpg").write_text("not an image")
  bad = f"broken/text.jpg {POINTS}"
  strict = _source(tmp_path, [bad] * 30)
  with pytest.raises(input_pipeline.BadRecordError, match="text.jpg: unreadable image"):
    for _ in batch_loader.TrainBatches(strict, 0, 20, 8, num_workers=3):
      pass
  lenient = _source(tmp_path, [bad], on_bad_record="skip")
  batches = list(batch_loader.TrainBatches(lenient, 0, 20, 8, num_workers=3))
  assert len(batches) == 20
  assert list(lenient.skipped) == ["broken/text.jpg"]


def test_negative_workers_is_a_clear_error(tmp_path):
  with pytest.raises(ValueError, match="config.data.num_workers=-1"):
    batch_loader.TrainBatches(_source(tmp_path), 0, 2, 2, num_workers=-1)
