"""The benchmark CLI runs every mode and prints one parseable JSON line each,
plus a profile summary per measurement."""

import json
import pathlib
import subprocess
import sys

import pytest

from benchmarks import profile_summary

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_benchmark_prints_json_for_train_inference_and_input(tmp_path):
  command = [
    sys.executable,
    "-m",
    "benchmarks.benchmark",
    "--config",
    "configs/tiny.py",
    "--modes",
    "train,infer,input",
    # float32: the tiny config's training programs, which the training
    # tests compile too (one persistent cache for the suite).
    "--dtypes",
    "float32",
    "--train_batch",
    "8",
    "--infer_batch",
    "4",
    "--iters",
    "2",
    "--input_workers",
    "0,2",
    "--infer_variants",
    "folded,running",
    "--profile_dir",
    str(tmp_path),
  ]
  done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-2000:]
  results = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
  by_mode = {}
  for r in results:
    by_mode.setdefault(r["mode"], []).append(r)
  assert [r["num_workers"] for r in by_mode["input"]] == [0, 2]
  assert all(r["source"] == "synthetic" and r["images_per_s"] > 0 for r in by_mode["input"])
  (train,) = by_mode["train_iteration"]
  assert train["finite_loss"] and train["dtype"] == "float32" and train["batch"] == 8
  assert train["gflop_per_iter"] > 0 and train["images_per_s"] > 0
  assert train["xla_gflop_per_iter"] > 0 and train["mfu"] is None  # no known CPU peak
  # 8 CPU devices (conftest): no device repeats another's work.
  assert train["num_devices"] == 8 and train["executed_over_model"] == pytest.approx(1, abs=0.05)
  networks = train["gflop_per_image_by_network"]
  generator = networks["Generator"]
  # Backward is twice the forward, less the input gradient of passes on data.
  assert 1.5 * generator["forward"] < generator["backward"] <= 2 * generator["forward"]
  assert {"SphereFace20a", "PasswordHead"} <= set(networks)
  assert sum(sum(d.values()) for d in networks.values()) * 8 == pytest.approx(
    train["gflop_per_iter"], rel=0.02
  )
  assert [r["variant"] for r in by_mode["generator_inference"]] == ["folded", "running"]
  assert all(r["finite_output"] for r in by_mode["generator_inference"])
  profiles = {r["of"]: r for r in by_mode["profile"]}
  assert sorted(profiles) == [
    "infer_float32_folded_b4",
    "infer_float32_running_b4",
    "train_float32_fused_b8",
  ]
  for profile in profiles.values():
    assert profile["by_category"]["convolution"] > 0 and profile["busy_ms"] > 0
    # The folder alone (trace + saved HLO) gives the same summary again.
    again = profile_summary.summarize_dir(profile["trace_dir"], calls=2)
    assert again["gflop"] == profile["gflop"] and again["by_scope"] == profile["by_scope"]
  # On CPU XLA runs exactly the model's convolutions and dots (the profile
  # rounds its GFLOP to 3 decimals).
  assert profiles["train_float32_fused_b8"]["gflop"] == pytest.approx(
    train["gflop_per_iter"], rel=1e-3, abs=5e-4
  )
  folded = by_mode["generator_inference"][0]
  assert profiles["infer_float32_folded_b4"]["gflop"] == pytest.approx(
    folded["gflop_per_call"], rel=1e-3, abs=5e-4
  )
  assert any("Generator" in scope for scope in profiles["train_float32_fused_b8"]["by_scope"])
