"""layout_verdict applies generator_layout's rule to the lines of a GPU measurement:
a layout replaces the GPU entry only by beating it in training and in
inference; folded_trunk_padding is judged on inference alone."""

import json
import subprocess
import sys

import pytest

from benchmarks import layout_verdict
from fit_jax.models import generator_layout

CURRENT = dict(
  generator_layout.BY_PLATFORM["gpu"],
  upsample="resize_conv",
  rgb_block=2,
  rgb_conv="conv",
  folded_trunk_padding="per_conv",
)
BLOCKS = dict(CURRENT, rgb_conv="space_to_depth", rgb_block=4, upsample="phase_2x2")
PHASE = dict(CURRENT, upsample="phase")


def _lines(run, layout, train=None, infer=None, dtype="bfloat16", peak_gib=11.0):
  """The JSON lines gpu_layouts.sh writes for one run (benchmark.py's fields)."""
  common = {"run": run, "dtype": dtype, "layout": layout, "device": "NVIDIA H200"}
  lines = []
  if train is not None:
    lines.append(
      {
        **common,
        "mode": "train_iteration",
        "variant": "fused",
        "batch": 48,
        "images_per_s": train,
        "finite_loss": True,
        "peak_memory_bytes": int(peak_gib * 2**30),
      }
    )
    lines.append({"run": run, "mode": "profile", "of": "train"})  # ignored
  if infer is not None:
    lines.append(
      {
        **common,
        "mode": "generator_inference",
        "variant": "folded",
        "batch": 256,
        "images_per_s": infer,
        "finite_output": True,
      }
    )
  return [json.dumps(line) for line in lines]


def _results(*runs):
  return [line for run in runs for line in run]


def test_a_layout_faster_in_both_modes_becomes_the_entry_and_border_joins_it():
  lines = _results(
    _lines("bf16", CURRENT, 530.0, 13_000.0),
    _lines("bf16_blocks", BLOCKS, 600.0, 17_000.0),
    _lines("bf16_blocks_border", dict(BLOCKS, folded_trunk_padding="border"), infer=18_000.0),
    _lines("f32_blocks", BLOCKS, 200.0, 5_000.0, dtype="float32"),
    [json.dumps({"run": "bf16_phase", "rc": 1, "error": "RuntimeError: boom"})],
  )
  result = layout_verdict.verdict(lines, CURRENT)
  assert result["baseline"] == "bf16"
  assert result["chosen"] == {"train": "bf16_blocks", "infer": "bf16_blocks_border"}
  assert result["entry"] == dict(BLOCKS, folded_trunk_padding="border")
  assert result["entry_changes"]
  assert result["speedup_over_baseline"] == {
    "train": pytest.approx(600 / 530, abs=1e-4),
    "infer": pytest.approx(18 / 13, abs=1e-4),
  }
  assert {k: v["met"] for k, v in result["targets"].items()} == {
    "train_images_per_s": True,
    "train_peak_gib": True,
    "infer_images_per_s": True,
  }
  assert result["all_targets_met"]
  assert result["failed"] == {"bf16_phase": "RuntimeError: boom"}


def test_faster_in_one_mode_only_changes_nothing():
  lines = _results(
    _lines("bf16", CURRENT, 530.0, 13_000.0),
    _lines("bf16_blocks", BLOCKS, 700.0, 12_900.0),
    _lines("bf16_phase", PHASE, 520.0, 20_000.0),
    # border of a layout that did not win is not judged
    _lines("bf16_blocks_border", dict(BLOCKS, folded_trunk_padding="border"), infer=30_000.0),
  )
  result = layout_verdict.verdict(lines, CURRENT)
  assert result["chosen"] == {"train": "bf16", "infer": "bf16"}
  assert result["entry"] == CURRENT and not result["entry_changes"]
  assert result["targets"]["train_images_per_s"]["met"] is False
  assert not result["all_targets_met"]


def test_of_two_winners_the_larger_combined_speedup_and_a_slower_border_stays_out():
  lines = _results(
    _lines("bf16", CURRENT, 500.0, 10_000.0),
    _lines("bf16_phase", PHASE, 600.0, 10_500.0),  # 1.2 x 1.05
    _lines("bf16_blocks", BLOCKS, 520.0, 13_000.0),  # 1.04 x 1.3
    _lines("bf16_blocks_border", dict(BLOCKS, folded_trunk_padding="border"), infer=12_000.0),
  )
  result = layout_verdict.verdict(lines, CURRENT)
  assert result["chosen"] == {"train": "bf16_blocks", "infer": "bf16_blocks"}
  assert result["entry"] == BLOCKS


def test_targets_need_float32_to_run_and_memory_within_half_the_reference():
  fast = _lines("bf16", CURRENT, 600.0, 17_000.0, peak_gib=17.0)
  result = layout_verdict.verdict(fast, CURRENT)
  assert result["targets"]["train_peak_gib"] == {
    "target": "<= 16.25",
    "measured": pytest.approx(17.0),
    "met": False,
  }
  assert result["float32_runs"] == {} and not result["all_targets_met"]
  lean = _results(
    _lines("bf16", CURRENT, 600.0, 17_000.0),
    _lines("f32", CURRENT, 150.0, 4_000.0, dtype="float32"),
  )
  assert layout_verdict.verdict(lean, CURRENT)["all_targets_met"]


def test_bad_input_is_one_clear_error():
  with pytest.raises(ValueError, match="no bfloat16 run of the current layout"):
    layout_verdict.verdict(_lines("bf16_blocks", BLOCKS, 600.0, 17_000.0), CURRENT)
  with pytest.raises(ValueError, match="line 3: not JSON"):
    layout_verdict.verdict(_lines("bf16", CURRENT, 600.0) + ["{oops"], CURRENT)
  with pytest.raises(ValueError, match=r"line 1 \(run 'x', train_iteration\): no \['layout'\]"):
    layout_verdict.verdict(
      [
        '{"run": "x", "mode": "train_iteration", "variant": "fused", '
        '"images_per_s": 1.0, "dtype": "bfloat16"}'
      ],
      CURRENT,
    )


def test_cli_reads_a_results_file(tmp_path):
  results = tmp_path / "results.jsonl"
  gpu, cpu = generator_layout.BY_PLATFORM["gpu"], generator_layout.BY_PLATFORM["cpu"]
  results.write_text(
    "\n".join(_lines("a", gpu, 530.0, 13_000.0) + _lines("b", cpu, 530.0, 13_000.0)) + "\n"
  )

  def baseline(*platform):
    done = subprocess.run(
      [sys.executable, "-m", "benchmarks.layout_verdict", str(results), *platform],
      capture_output=True,
      text=True,
      timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)["baseline"]

  assert baseline() == "a"  # the GPU's entry by default
  assert baseline("cpu") == ("a" if cpu == gpu else "b")  # a CPU dry run's
  done = subprocess.run(
    [sys.executable, "-m", "benchmarks.layout_verdict", str(tmp_path / "missing.jsonl")],
    capture_output=True,
    text=True,
  )
  assert done.returncode == 1
  assert done.stderr.strip() == f"{tmp_path / 'missing.jsonl'}: No such file or directory"
