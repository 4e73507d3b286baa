"""Kernels, FLOPs and bytes of compiled programs, and the static benchmark
that compiles the benchmark's programs without running them."""

import importlib.util
import json
import pathlib
import subprocess
import sys

import pytest

from benchmarks import flop_count, hlo_traffic

ROOT = pathlib.Path(__file__).resolve().parents[2]

# A GPU-style module: a cuDNN call with scratch space, a fusion that only
# slices its operand, and one that reads two operands in full.
_MODULE = """HloModule m

%fused_slice (p0: bf16[8,64,64,32]) -> bf16[8,1,1,32] {
  %p0 = bf16[8,64,64,32]{3,2,1,0} parameter(0)
  ROOT %s = bf16[8,1,1,32]{3,2,1,0} slice(%p0), slice={[0:8], [32:33], [32:33], [0:32]}
}

%fused_add (p0.1: bf16[8,64,64,32], p1.1: bf16[8,1,1,32]) -> bf16[8,64,64,32] {
  %p0.1 = bf16[8,64,64,32]{3,2,1,0} parameter(0)
  %p1.1 = bf16[8,1,1,32]{3,2,1,0} parameter(1)
  %b = bf16[8,64,64,32]{3,2,1,0} broadcast(%p1.1), dimensions={0,1,2,3}
  ROOT %a = bf16[8,64,64,32]{3,2,1,0} add(%p0.1, %b)
}

ENTRY %main (x: bf16[8,64,64,32], w: bf16[32,3,3,32]) -> bf16[8,64,64,32] {
  %x = bf16[8,64,64,32]{3,2,1,0} parameter(0)
  %w = bf16[32,3,3,32]{3,2,1,0} parameter(1)
  %conv = (bf16[8,64,64,32]{3,2,1,0}, u8[4096]{0}) custom-call(%x, %w), window={size=3x3 pad=1_1x1_1}, dim_labels=b01f_o01i->b01f, custom_call_target="__cudnn$convForward"
  %gte = bf16[8,64,64,32]{3,2,1,0} get-tuple-element(%conv), index=0
  %loop_slice_fusion = bf16[8,1,1,32]{3,2,1,0} fusion(%gte), kind=kLoop, calls=%fused_slice
  ROOT %loop_add_fusion.3 = bf16[8,64,64,32]{3,2,1,0} fusion(%gte, %loop_slice_fusion), kind=kLoop, calls=%fused_add
}
"""


_ROW_STATISTICS = """HloModule rows

%fused_row_mean (p0: bf16[4,64,64,8], p1: f32[4,8]) -> f32[4,8] {
  %p0 = bf16[4,64,64,8]{3,2,1,0} parameter(0)
  %p1 = f32[4,8]{1,0} parameter(1)
  %c = f32[4,64,64,8]{3,2,1,0} convert(%p0)
  %b = f32[4,64,64,8]{3,2,1,0} broadcast(%p1), dimensions={0,3}
  %a = f32[4,64,64,8]{3,2,1,0} add(%c, %b)
  %s = f32[4,1,64,8]{3,2,1,0} slice(%a), slice={[0:4], [0:1], [0:64], [0:8]}
  %zero = f32[] constant(0)
  ROOT %r = f32[4,8]{1,0} reduce(%s, %zero), dimensions={1,2}, to_apply=%sum
}

%fused_full (p0.1: bf16[4,64,64,8]) -> (f32[4,64,64,8], bf16[4,1,64,8]) {
  %p0.1 = bf16[4,64,64,8]{3,2,1,0} parameter(0)
  %c.1 = f32[4,64,64,8]{3,2,1,0} convert(%p0.1)
  %s.1 = bf16[4,1,64,8]{3,2,1,0} slice(%p0.1), slice={[0:4], [0:1], [0:64], [0:8]}
  ROOT %t = (f32[4,64,64,8]{3,2,1,0}, bf16[4,1,64,8]{3,2,1,0}) tuple(%c.1, %s.1)
}

ENTRY %main (x: bf16[4,64,64,8], y: f32[4,8]) -> f32[4,8] {
  %x = bf16[4,64,64,8]{3,2,1,0} parameter(0)
  %y = f32[4,8]{1,0} parameter(1)
  %input_reduce_fusion = f32[4,8]{1,0} fusion(%x, %y), kind=kInput, calls=%fused_row_mean
  ROOT %loop_convert_fusion = (f32[4,64,64,8]{3,2,1,0}, bf16[4,1,64,8]{3,2,1,0}) fusion(%x), kind=kLoop, calls=%fused_full
}
"""


def test_a_slice_after_elementwise_ops_reads_only_its_elements():
  ops = {op.name: op for op in hlo_traffic.entry_traffic(_ROW_STATISTICS)}
  # One image row of 64: 1/64 of x, through convert and add; the broadcast
  # operand is read in full.
  assert ops["input_reduce_fusion"].bytes_read == 4 * 64 * 8 * 2 + 4 * 8 * 4
  # Sliced by one user but converted whole by another: read in full.
  assert ops["loop_convert_fusion"].bytes_read == 4 * 64 * 64 * 8 * 2


# A map's 1-pixel border rewritten in place (padding.rewrite_border):
# a gather of the sources, then a scatter into the map; and a
# dynamic-update-slice of one column, as XLA's GPU backend fuses them.
_IN_PLACE = """HloModule in_place

%keep (a: bf16[], b: bf16[]) -> bf16[] {
  %a = bf16[] parameter(0)
  ROOT %b = bf16[] parameter(1)
}

%wrapped_gather_computation (p0: bf16[8,34,34,64], p1: s32[132,2]) -> bf16[132,8,1,1,64] {
  %p0 = bf16[8,34,34,64]{3,2,1,0} parameter(0)
  %p1 = s32[132,2]{1,0} parameter(1)
  ROOT %g = bf16[132,8,1,1,64]{4,3,2,1,0} gather(%p0, %p1), offset_dims={1,2,3,4}, collapsed_slice_dims={}, start_index_map={1,2}, index_vector_dim=1, slice_sizes={8,1,1,64}
}

%wrapped_scatter_computation (q0: bf16[8,34,34,64], q1: s32[132,2], q2: bf16[132,8,1,1,64]) -> bf16[8,34,34,64] {
  %q0 = bf16[8,34,34,64]{3,2,1,0} parameter(0)
  %q1 = s32[132,2]{1,0} parameter(1)
  %q2 = bf16[132,8,1,1,64]{4,3,2,1,0} parameter(2)
  ROOT %s = bf16[8,34,34,64]{3,2,1,0} scatter(%q0, %q1, %q2), update_window_dims={1,2,3,4}, inserted_window_dims={}, scatter_dims_to_operand_dims={1,2}, index_vector_dim=1, indices_are_sorted=true, unique_indices=true, to_apply=%keep
}

%fused_dus (r0: bf16[8,34,34,64], r1: bf16[8,34,1,64]) -> bf16[8,34,34,64] {
  %r0 = bf16[8,34,34,64]{3,2,1,0} parameter(0)
  %r1 = bf16[8,34,1,64]{3,2,1,0} parameter(1)
  %zero = s32[] constant(0)
  ROOT %d = bf16[8,34,34,64]{3,2,1,0} dynamic-update-slice(%r0, %r1, %zero, %zero, %zero, %zero)
}

%fused_dus_reading (t0: bf16[8,34,34,64], t1: bf16[8,34,1,64]) -> bf16[8,34,34,64] {
  %t0 = bf16[8,34,34,64]{3,2,1,0} parameter(0)
  %t1 = bf16[8,34,1,64]{3,2,1,0} parameter(1)
  %n = bf16[8,34,34,64]{3,2,1,0} negate(%t0)
  %zero.1 = s32[] constant(0)
  ROOT %d.1 = bf16[8,34,34,64]{3,2,1,0} dynamic-update-slice(%n, %t1, %zero.1, %zero.1, %zero.1, %zero.1)
}

ENTRY %main (x: bf16[8,34,34,64], i: s32[132,2], c: bf16[8,34,1,64]) -> bf16[8,34,34,64] {
  %x = bf16[8,34,34,64]{3,2,1,0} parameter(0)
  %i = s32[132,2]{1,0} parameter(1)
  %c = bf16[8,34,1,64]{3,2,1,0} parameter(2)
  %wrapped_gather = bf16[132,8,1,1,64]{4,3,2,1,0} fusion(%x, %i), kind=kLoop, calls=%wrapped_gather_computation
  %wrapped_scatter = bf16[8,34,34,64]{3,2,1,0} fusion(%x, %i, %wrapped_gather), kind=kInput, calls=%wrapped_scatter_computation
  %loop_dynamic_update_slice_fusion = bf16[8,34,34,64]{3,2,1,0} fusion(%wrapped_scatter, %c), kind=kLoop, calls=%fused_dus
  ROOT %loop_negate_fusion = bf16[8,34,34,64]{3,2,1,0} fusion(%loop_dynamic_update_slice_fusion, %c), kind=kLoop, calls=%fused_dus_reading
}
"""


def test_in_place_updates_move_only_the_updated_bytes():
  ops = {op.name: op for op in hlo_traffic.entry_traffic(_IN_PLACE)}
  border, column, indices = 132 * 8 * 64 * 2, 8 * 34 * 64 * 2, 132 * 2 * 4
  assert (ops["wrapped_gather"].bytes_read, ops["wrapped_gather"].bytes_written) == (
    border + indices,
    border,
  )
  # XLA runs both in place: the map they update is neither read nor rewritten.
  assert (ops["wrapped_scatter"].bytes_read, ops["wrapped_scatter"].bytes_written) == (
    indices + border,
    border,
  )
  assert (
    ops["loop_dynamic_update_slice_fusion"].bytes_read,
    ops["loop_dynamic_update_slice_fusion"].bytes_written,
  ) == (column, column)
  # A fusion that also reads the buffer it updates moves the whole map.
  whole = 8 * 34 * 34 * 64 * 2
  assert ops["loop_negate_fusion"].bytes_read == whole + column
  assert ops["loop_negate_fusion"].bytes_written == whole


def test_kernels_flops_and_bytes_of_a_module():
  image = 8 * 64 * 64 * 32 * 2
  ops = {op.name: op for op in hlo_traffic.entry_traffic(_MODULE)}
  assert sorted(ops) == ["conv", "loop_add_fusion.3", "loop_slice_fusion"]
  conv = ops["conv"]
  assert conv.category == "__cudnn$convForward"
  # Taps on real pixels only: (3 * 64 - 2) per axis with padding 1.
  assert conv.flops == 2 * 8 * 32 * 32 * (3 * 64 - 2) ** 2
  # The scratch space is not data; the kernel's bytes are.
  assert (conv.bytes_read, conv.bytes_written) == (image + 32 * 9 * 32 * 2, image)
  # Slicing one pixel per channel reads that pixel, not the whole map.
  assert (ops["loop_slice_fusion"].bytes_read, ops["loop_slice_fusion"].bytes_written) == (
    8 * 32 * 2,
    8 * 32 * 2,
  )
  assert ops["loop_add_fusion.3"].bytes_read == image + 8 * 32 * 2
  assert ops["loop_add_fusion.3"].category == "loop_add_fusion"

  summary = hlo_traffic.summarize([_MODULE], peak_flops=1e12, bandwidth=1e9)
  assert summary["kernels"] == 3
  assert summary["gbytes"] == pytest.approx(
    sum(o.bytes_read + o.bytes_written for o in ops.values()) / 1e9
  )
  assert summary["gbytes_memory_only_ops"] < summary["gbytes"]
  # At 1 GB/s every kernel is bound by its bytes.
  assert summary["floor_ms"] == pytest.approx(summary["gbytes"] * 1e3)
  assert summary["floor_ms"] == pytest.approx(
    summary["floor_ms_ops_with_flops"] + summary["floor_ms_memory_only_ops"]
  )
  assert [h["name"] for h in summary["heaviest"]] == [
    "conv",
    "loop_add_fusion.3",
    "loop_slice_fusion",
  ]
  assert "floor_ms" not in hlo_traffic.summarize([_MODULE])

  # The same kernels inside a called computation (XLA's command buffers).
  called = (
    _MODULE.replace("ENTRY %main (x", "%graph (x")
    .replace("ROOT %loop_add_fusion.3", "ROOT %loop_add_fusion.3")
    .rstrip()
    + """

ENTRY %main.2 (x.2: bf16[8,64,64,32], w.2: bf16[32,3,3,32]) -> bf16[8,64,64,32] {
  %x.2 = bf16[8,64,64,32]{3,2,1,0} parameter(0)
  %w.2 = bf16[32,3,3,32]{3,2,1,0} parameter(1)
  ROOT %call = bf16[8,64,64,32]{3,2,1,0} call(%x.2, %w.2), to_apply=%graph
}
"""
  )
  assert hlo_traffic.entry_traffic(called) == list(ops.values())
  assert flop_count.hlo_module_flops(called) == flop_count.hlo_module_flops(_MODULE) == conv.flops


def test_static_benchmark_compiles_without_running(tmp_path):
  """On this machine's CPU: both training steps and inference, with model
  FLOPs equal to the executed ones and every kernel in one category."""
  command = [
    sys.executable,
    "-m",
    "benchmarks.static_benchmark",
    "--config",
    "configs/tiny.py",
    # float32 on one device: the training programs of tests/training's
    # tiny runs (one persistent cache for the suite).
    "--dtypes",
    "float32",
    "--train_batch",
    "8",
    "--infer_batch",
    "4",
    "--infer_variants",
    "folded",
  ]
  done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-2000:]
  results = {
    r["mode"]: r
    for r in map(json.loads, filter(lambda line: line.startswith("{"), done.stdout.splitlines()))
  }
  train, infer = results["train_iteration"], results["generator_inference"]
  assert len(train["kernels_by_program"]) == 2 and len(infer["kernels_by_program"]) == 1
  for r in (train, infer):
    assert r["executed_over_model"] == pytest.approx(1, abs=0.05)
    # executed_over_model is rounded to 4 decimals.
    assert r["gflop"] == pytest.approx(r["gflop_model"] * r["executed_over_model"], rel=1e-4)
    assert r["gbytes"] > r["gbytes_memory_only_ops"] > 0 and "floor_ms" not in r
    assert sum(c["kernels"] for c in r["by_category"].values()) == r["kernels"]
    # Each category's GFLOP and their total are rounded to 3 decimals.
    assert sum(c["gflop"] for c in r["by_category"].values()) == pytest.approx(
      r["gflop"], rel=1e-3, abs=5e-4 * (len(r["by_category"]) + 1)
    )
    # The compiler's memory estimate holds at least the parameters.
    assert r["devices"] == 1 and all(m > 0 for m in r["memory_gib_by_program"])


def test_static_benchmark_target_errors_and_gpu_target(tmp_path):
  from benchmarks import static_benchmark

  with pytest.raises(ValueError, match="--target .*missing.txtpb: No such file"):
    static_benchmark.target_device(str(tmp_path / "missing.txtpb"))
  target = str(ROOT / "benchmarks/targets/h200.txtpb")
  assert static_benchmark.memory_bandwidth(target) == 4.8e12
  try:
    has_plugin = importlib.util.find_spec("jax_plugins.xla_cuda12") is not None
  except ModuleNotFoundError:
    has_plugin = False
  if not has_plugin:
    # CI has no CUDA plugin: the error says what to install.
    with pytest.raises(ValueError, match=r"needs JAX's CUDA plugin \(pip install 'jax\[cuda12\]"):
      static_benchmark.target_device(target)
  else:
    assert "H200" in static_benchmark.target_device(target).device_kind
