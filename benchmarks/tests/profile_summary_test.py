"""profile_summary on a real CPU trace, and on a GPU-shaped trace's layout."""

import gzip
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from benchmarks import flop_count, profile_summary


class _Net(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(16, (3, 3), name="first")(x))
    return nn.Conv(16, (3, 3), name="second")(x).sum()


def test_scope_of_names_modules_and_direction():
  assert profile_summary.scope_of(
    "jit(generator_step)/transpose(jvp(Generator))/block_3/conv_0/conv_general_dilated"
  ) == ("Generator/block_3", True)
  assert profile_summary.scope_of("jit(f)/jvp(Generator)/conv_general_dilated") == (
    "Generator",
    False,
  )
  assert profile_summary.scope_of("jit(f)/concatenate") == ("(top level)", False)


def test_summary_of_a_real_cpu_trace(tmp_path):
  net = _Net()
  x = jnp.ones((8, 32, 32, 16))
  params = net.init(jax.random.PRNGKey(0), x)
  step = jax.jit(jax.grad(lambda p: net.apply(p, x)))
  compiled = step.lower(params).compile()
  jax.block_until_ready(compiled(params))
  with jax.profiler.trace(str(tmp_path)):
    for _ in range(3):
      jax.block_until_ready(compiled(params))
  summary = profile_summary.summarize(str(tmp_path), [compiled.as_text()], calls=3)
  assert summary["events"] >= 3
  assert 0 < summary["busy_ms"] <= summary["wall_ms"] + 1e-3
  assert summary["by_category"]["convolution"] > 0
  # Each category's time and their total are rounded to 3 decimals.
  assert sum(summary["by_category"].values()) == pytest.approx(
    summary["op_ms"], rel=1e-3, abs=5e-4 * (len(summary["by_category"]) + 1)
  )
  scopes = summary["by_scope"]
  assert scopes["_Net/first"]["forward"] > 0 and scopes["_Net/second"]["backward"] > 0
  assert summary["top_ops"][0]["ms"] >= summary["top_ops"][-1]["ms"]
  # Every convolution of the module ran, so the FLOPs seen are the module's.
  assert summary["gflop"] == pytest.approx(
    flop_count.hlo_module_flops(compiled.as_text()) / 1e9, abs=1e-3
  )
  conv_ops = [op for op in summary["top_ops"] if op["category"] == "convolution"]
  assert conv_ops and all(op["gflop"] > 0 and op["tflops"] > 0 for op in conv_ops)
  assert summary["tflops_by_category"]["convolution"] > 0


_HLO = """HloModule jit_step, entry_computation_layout={()->f32[]}

%fused_conv (p0: bf16[8,32,32,64], p1: bf16[3,3,64,64]) -> bf16[8,32,32,64] {
  %p0 = bf16[8,32,32,64]{3,2,1,0} parameter(0)
  %p1 = bf16[3,3,64,64]{3,2,1,0} parameter(1)
  ROOT %convolution.1 = bf16[8,32,32,64]{3,2,1,0} convolution(%p0, %p1), window={size=3x3 pad=1_1x1_1}, dim_labels=b01f_01io->b01f
}

ENTRY %main.1 (a: bf16[8,32,32,64], b: bf16[3,3,64,64]) -> f32[] {
  %a = bf16[8,32,32,64]{3,2,1,0} parameter(0)
  %b = bf16[3,3,64,64]{3,2,1,0} parameter(1)
  %transpose.2 = bf16[64,32,32,8]{3,2,1,0} transpose(%a), dimensions={3,1,2,0}, metadata={op_name="jit(step)/jvp(Generator)/block_0/transpose"}
  %conv_fusion.3 = bf16[8,32,32,64]{3,2,1,0} fusion(%a, %b), kind=kCustom, calls=%fused_conv, metadata={op_name="jit(step)/transpose(jvp(Generator))/block_0/conv_0/conv_general_dilated"}
  ROOT %reduce.4 = f32[] reduce(%conv_fusion.3), dimensions={0,1,2,3}, metadata={op_name="jit(step)/reduce_sum"}
}
"""


def test_gpu_trace_layout_uses_streams_and_modules(tmp_path):
  # The layout of a GPU trace (device process, stream threads, a derived
  # "XLA Ops" line repeating the kernels); only its parsing is checked here.
  meta = [
    {"ph": "M", "pid": 1, "name": "process_name", "args": {"name": "/device:GPU:0"}},
    {"ph": "M", "pid": 1, "tid": 7, "name": "thread_name", "args": {"name": "Stream #7(Compute)"}},
    {"ph": "M", "pid": 1, "tid": 9, "name": "thread_name", "args": {"name": "XLA Ops"}},
    {"ph": "M", "pid": 2, "name": "process_name", "args": {"name": "/host:CPU"}},
  ]

  def kernel(tid, name, op, ts, dur):
    return {
      "ph": "X",
      "pid": 1,
      "tid": tid,
      "name": name,
      "ts": ts,
      "dur": dur,
      "args": {"hlo_op": op, "hlo_module": "jit_step"},
    }

  events = meta + [
    kernel(7, "sm90_xmma_fprop_bf16", "conv_fusion.3", 0, 600),
    kernel(7, "transpose_2", "transpose.2", 650, 100),
    kernel(7, "reduce_4", "reduce.4", 800, 100),
    kernel(9, "conv_fusion.3", "conv_fusion.3", 0, 600),  # derived line: not counted
    {"ph": "X", "pid": 2, "tid": 1, "name": "PjitFunction(step)", "ts": 0, "dur": 1000},
  ]
  trace_dir = tmp_path / "plugins" / "profile" / "run"
  trace_dir.mkdir(parents=True)
  with gzip.open(trace_dir / "host.trace.json.gz", "wt") as f:
    json.dump({"traceEvents": events}, f)
  summary = profile_summary.summarize(str(tmp_path), [_HLO], calls=1)
  assert summary["events"] == 3
  assert summary["by_category"] == {"convolution": 0.6, "layout": 0.1, "reduction": 0.1}
  assert summary["busy_ms"] == 0.8 and summary["wall_ms"] == 0.9
  assert summary["by_scope"]["Generator/block_0"] == {"backward": 0.6, "forward": 0.1}
  top = summary["top_ops"][0]
  assert top["op"] == "jit_step/conv_fusion.3"
  # 8 images, 64 -> 64 channels, 3x3 taps on a zero-padded 32x32 map: 94 real
  # (output, tap) pairs per spatial dim.
  gflop = 2 * 8 * 64 * 64 * 94 * 94 / 1e9
  assert top["gflop"] == pytest.approx(gflop, abs=1e-3)
  assert top["tflops"] == pytest.approx(gflop / 0.6, abs=0.01)
  assert summary["tflops_busy"] == pytest.approx(gflop / 0.8, abs=0.01)
  assert "gflop" not in summary["top_ops"][1]  # a transpose does no FLOPs
  # Every kernel's bytes (read + written) and achieved rate.
  image = 8 * 32 * 32 * 64 * 2
  assert top["mbytes"] == pytest.approx((2 * image + 3 * 3 * 64 * 64 * 2) / 1e6, abs=1e-3)
  transpose = summary["top_ops"][1]
  assert transpose["mbytes"] == pytest.approx(2 * image / 1e6, abs=1e-3)
  assert transpose["gbps"] == pytest.approx(2 * image / 0.1e-3 / 1e9, abs=0.1)


def test_untagged_kernels_fall_back_to_the_xla_ops_line(tmp_path):
  meta = [
    {"ph": "M", "pid": 1, "name": "process_name", "args": {"name": "/device:GPU:0"}},
    {"ph": "M", "pid": 1, "tid": 7, "name": "thread_name", "args": {"name": "Stream #7(Compute)"}},
    {"ph": "M", "pid": 1, "tid": 9, "name": "thread_name", "args": {"name": "XLA Ops"}},
  ]
  events = meta + [
    {"ph": "X", "pid": 1, "tid": 7, "name": "sm90_xmma_fprop_bf16", "ts": 0, "dur": 600},
    {"ph": "X", "pid": 1, "tid": 9, "name": "conv_fusion.3", "ts": 0, "dur": 600},
    {"ph": "X", "pid": 1, "tid": 9, "name": "transpose.2", "ts": 650, "dur": 100},
  ]
  with gzip.open(tmp_path / "gpu.trace.json.gz", "wt") as f:
    json.dump({"traceEvents": events}, f)
  summary = profile_summary.summarize(str(tmp_path), [_HLO], calls=1)
  assert summary["by_category"] == {"convolution": 0.6, "layout": 0.1}


def test_a_folder_without_a_trace_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="no \\*.trace.json.gz"):
    profile_summary.summarize(str(tmp_path), [_HLO], calls=1)
  with pytest.raises(FileNotFoundError, match="no \\*.hlo.txt.gz"):
    profile_summary.summarize_dir(str(tmp_path), calls=1)
  profile_summary.save_hlo(str(tmp_path), [_HLO])
  assert (tmp_path / "jit_step.hlo.txt.gz").exists()
  with pytest.raises(FileNotFoundError, match="no \\*.trace.json.gz"):
    profile_summary.summarize_dir(str(tmp_path), calls=1)
