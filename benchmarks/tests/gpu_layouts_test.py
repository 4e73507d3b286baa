"""benchmarks/gpu_layouts.sh's fallbacks: a GPU is lent for a fixed time, so the
path the script takes after a crash is tested here, with a stand-in `python3` that records
each benchmark run and fails the ones a test chooses (the benchmark itself is
tested in benchmark_test.py; the script's own dry run is in benchmarks/README)."""

import json
import os
import pathlib
import shutil
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]

# Records each benchmark run's cwd, XLA_FLAGS and arguments, hangs if they hold
# $HANG_IF, and fails it unless XLA_FLAGS holds $FAIL_UNLESS_FLAG ("" never
# fails, "never" always does).
# Other calls (the script writes a failed run's line with Python) go to this
# interpreter, except the device listing.
FAKE_PYTHON = r"""#!/usr/bin/env bash
if [[ "$*" == *"import jax"* ]]; then echo "fake devices"; exit 0; fi
if [[ "$*" != *benchmarks.benchmark* ]]; then exec "$REAL_PYTHON" "$@"; fi
printf '%s\t%s\t%s\n' "$PWD" "${XLA_FLAGS:-}" "$*" >> "$CALLS"
if [[ -n "${HANG_IF:-}" && "$*" == *"$HANG_IF"* ]]; then exec sleep 60; fi
if [[ "${XLA_FLAGS:-}" != *"$FAIL_UNLESS_FLAG"* ]]; then
  echo "some log line" >&2
  echo "RuntimeError: CUDA_ERROR_ILLEGAL_INSTRUCTION (simulated)" >&2
  exit 3
fi
if [[ -n "${FAKE_LAYOUT:-}" ]]; then  # whole records, for the verdict
  for mode in "train_iteration fused" "generator_inference folded"; do
    set -- $mode
    echo "{\"mode\": \"$1\", \"variant\": \"$2\", \"images_per_s\": 1.0, \"dtype\": \"bfloat16\", \"layout\": $FAKE_LAYOUT, \"finite_loss\": true, \"finite_output\": true}"
  done
  exit 0
fi
echo '{"mode": "train_iteration", "images_per_s": 1.0}'
"""


def _run_script(tmp_path, fail_unless_flag, runs, **env_extra):
  work = tmp_path / "repo"
  (work / "benchmarks").mkdir(parents=True)  # parents: tmp_path may be a new subfolder
  shutil.copy(ROOT / "benchmarks" / "gpu_layouts.sh", work / "benchmarks")
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  fake = bin_dir / "python3"
  fake.write_text(FAKE_PYTHON)
  fake.chmod(0o755)
  out, calls = tmp_path / "out", tmp_path / "calls.tsv"
  env = dict(
    os.environ,
    PATH=f"{bin_dir}:{os.environ['PATH']}",
    OUT=str(out),
    CALLS=str(calls),
    REAL_PYTHON=sys.executable,
    FAIL_UNLESS_FLAG=fail_unless_flag,
    RUNS=runs,
    PROFILE_RUN="",
    AUTOTUNE_CACHE=str(tmp_path / "autotune"),
    PROFILES=str(tmp_path / "profiles"),
    XLA_FLAGS="--given_flag",
    **env_extra,
  )
  done = subprocess.run(
    ["bash", "benchmarks/gpu_layouts.sh"],
    cwd=work,
    env=env,
    capture_output=True,
    text=True,
    timeout=60,
  )
  results = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
  rows = [line.split("\t") for line in calls.read_text().splitlines()]
  return done, results, [(pathlib.Path(cwd), flags) for cwd, flags, _ in rows]


def test_a_working_default_runs_every_named_run_with_the_autotune_cache(tmp_path):
  done, results, calls = _run_script(tmp_path, "", "bf16 bf16_space_to_depth4")
  assert done.returncode == 0, done.stderr
  assert [r["run"] for r in results] == ["bf16", "bf16_space_to_depth4"]
  assert all("--given_flag" in f and "autotune_cache_dir" in f for _, f in calls)


def test_runs_after_the_triton_fallback_keep_its_flag_and_say_so(tmp_path):
  done, results, calls = _run_script(
    tmp_path, "--xla_gpu_enable_triton_gemm=false", "bf16 bf16_space_to_depth4"
  )
  assert done.returncode == 0, done.stderr
  assert [(r["run"], "error" in r) for r in results] == [
    ("bf16", True),
    ("bf16_nocache", True),
    ("bf16_notriton", False),
    ("bf16_space_to_depth4_notriton", False),
  ]
  assert results[0]["error"] == "RuntimeError: CUDA_ERROR_ILLEGAL_INSTRUCTION (simulated)"
  flags = [f for _, f in calls]
  assert "autotune_cache_dir" in flags[0]
  # No cache from the retry on; the given flags are kept throughout.
  assert all("autotune_cache_dir" not in f and "--given_flag" in f for f in flags[1:])
  assert all("triton_gemm=false" in f for f in flags[2:])


def test_when_every_try_fails_the_script_stops(tmp_path):
  done, results, _ = _run_script(tmp_path, "never", "bf16 bf16_space_to_depth4")
  assert done.returncode == 1
  assert [r["run"] for r in results] == ["bf16", "bf16_nocache", "bf16_notriton"]
  assert all(r["rc"] == 3 for r in results)


def test_the_script_ends_with_the_verdict_of_its_lines(tmp_path):
  """Its last step runs benchmarks.layout_verdict on results.jsonl (the real
  module, on the stand-in's whole records) into verdict.json and stderr."""
  from fit_jax.models import generator_layout

  gpu = generator_layout.BY_PLATFORM["gpu"]
  done, results, _ = _run_script(
    tmp_path, "", "bf16 bf16_space_to_depth4", FAKE_LAYOUT=json.dumps(gpu), PYTHONPATH=str(ROOT)
  )
  assert done.returncode == 0, done.stderr
  assert [r["run"] for r in results] == ["bf16"] * 2 + ["bf16_space_to_depth4"] * 2
  verdict = json.loads((tmp_path / "out" / "verdict.json").read_text())
  assert verdict["baseline"] == "bf16" and verdict["entry"] == gpu
  assert not verdict["entry_changes"]
  printed = json.loads(done.stderr.strip().splitlines()[-1])
  assert printed == {k: v for k, v in verdict.items() if k != "runs"}


def test_the_time_budget_stops_a_run_skips_the_rest_and_keeps_the_verdict(tmp_path):
  """A run still going at BUDGET_S is stopped and one with under MIN_RUN_S
  left is not started; each leaves a failed line, and the verdict of the
  lines before them still comes back (a call cut by its own limit would
  return neither)."""
  from fit_jax.models import generator_layout

  gpu = generator_layout.BY_PLATFORM["gpu"]
  done, results, _ = _run_script(
    tmp_path,
    "",
    "bf16 bf16_space_to_depth4 bf16_phase_2x2",
    FAKE_LAYOUT=json.dumps(gpu),
    PYTHONPATH=str(ROOT),
    HANG_IF="rgb_block=4",
    BUDGET_S="6",
    MIN_RUN_S="2",
  )
  assert done.returncode == 0, done.stderr
  assert [(r["run"], r.get("rc")) for r in results] == [
    ("bf16", None),
    ("bf16", None),
    ("bf16_space_to_depth4", 124),
    ("bf16_phase_2x2", 124),
  ]
  assert results[2]["error"].startswith("stopped at BUDGET_S=6 s")
  assert results[3]["error"].startswith("not started:")
  verdict = json.loads((tmp_path / "out" / "verdict.json").read_text())
  assert verdict["baseline"] == "bf16"
  assert sorted(verdict["failed"]) == ["bf16_phase_2x2", "bf16_space_to_depth4"]
