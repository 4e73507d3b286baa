"""The TPU compiler's cost estimates read from compiled HLO, and the static
benchmark's TPU slices."""

import importlib.util

import pytest

from benchmarks import tpu_cost

# The shape of libtpu's optimised HLO (abridged from a v5e compile of the
# generator): tiled layouts, async copies, a convolution fusion and a loop
# fusion with estimates, and a padding gather (kCustom) without one.
_MODULE = """HloModule jit_step, entry_computation_layout={(bf16[8,34,34,256]{3,0,2,1:T(8,128)(2,1)})->bf16[8,32,32,256]}

%fused_computation (param_0: bf16[8,34,34,256]) -> bf16[8,32,32,256] {
  %param_0 = bf16[8,34,34,256]{3,0,2,1:T(8,128)(2,1)} parameter(0)
  ROOT %slice = bf16[8,32,32,256]{3,0,2,1:T(8,128)(2,1)} slice(%param_0), slice={[0:8], [0:32], [0:32], [0:256]}
}

ENTRY %main.8 (x.1: bf16[8,32,32,256], w.1: f32[3,3,256,256]) -> bf16[8,32,32,256] {
  %x.1 = bf16[8,32,32,256]{3,0,2,1:T(8,128)(2,1)} parameter(0)
  %w.1 = f32[3,3,256,256]{3,2,1,0:T(8,128)} parameter(1)
  %copy-start = (f32[3,3,256,256]{3,2,1,0:T(8,128)S(1)}, f32[3,3,256,256]{3,2,1,0:T(8,128)}, u32[]{:S(2)}) copy-start(%w.1)
  %copy-done = f32[3,3,256,256]{3,2,1,0:T(8,128)S(1)} copy-done(%copy-start)
  %gather_fusion.3 = bf16[1156,8,256]{2,1,0:T(8,128)(2,1)} fusion(%x.1), kind=kCustom, calls=%fused_computation, metadata={op_name="jit(generator_step)/jvp(Generator)/block_0/gather" stack_frame_id=24}
  %bitcast.3 = bf16[8,34,34,256]{3,0,2,1:T(8,128)(2,1)} bitcast(%gather_fusion.3)
  %fusion.21 = bf16[8,32,32,256]{3,0,2,1:T(8,128)(2,1)} fusion(%bitcast.3, %copy-done), kind=kOutput, calls=%fused_computation, metadata={op_name="jit(generator_step)/jvp(Generator)/block_0/conv_0/conv_general_dilated" stack_frame_id=26}, backend_config={"flag_configs":[],"window_config":{"kernel_window_bounds":["2"]},"estimated_cycles":"150000","cost_model_type":"COST_MODEL_TYPE_ANALYTICAL"}
  ROOT %fusion.22 = bf16[8,32,32,256]{3,0,2,1:T(8,128)(2,1)} fusion(%fusion.21), kind=kLoop, calls=%fused_computation, metadata={op_name="jit(generator_step)/transpose(jvp(Generator))/block_0/norm_0/mul" stack_frame_id=27}, backend_config={"flag_configs":[],"estimated_cycles":"30000"}
}
"""


def test_entry_ops_read_estimates_and_skip_bookkeeping():
  ops = {op.name: op for op in tpu_cost.entry_ops(_MODULE)}
  # Parameters, bitcasts and the done half of an async copy launch nothing.
  assert set(ops) == {"copy-start", "gather_fusion.3", "fusion.21", "fusion.22"}
  assert ops["fusion.21"].cycles == 150000 and ops["fusion.21"].opcode == "fusion:kOutput"
  assert ops["fusion.22"].cycles == 30000 and ops["fusion.22"].opcode == "fusion:kLoop"
  assert ops["gather_fusion.3"].cycles is None
  assert ops["gather_fusion.3"].bytes_written == 1156 * 8 * 256 * 2
  with pytest.raises(ValueError, match="no ENTRY"):
    tpu_cost.entry_ops("HloModule empty\n")


def test_summary_in_cycles_and_ms_for_a_known_chip():
  known = tpu_cost.summarize([_MODULE], "TPU v5 lite")
  assert known["tpu_estimated_mcycles"] == pytest.approx(0.18)
  # v5e: 1.5 GHz (197 TFLOP/s from 4 MXUs of 128 x 128), 819 GB/s.
  assert known["tpu_estimated_ms"] == pytest.approx(0.12)
  assert known["tpu_mcycles_by_kind"] == {"fusion:kOutput": 0.15, "fusion:kLoop": 0.03}
  assert known["tpu_costliest_scopes"] == {"Generator/block_0": 0.15, "Generator/block_0 bw": 0.03}
  assert known["tpu_gathers_without_estimate"] == 1
  gather_bytes = 1156 * 8 * 256 * 2
  assert known["tpu_gather_gbytes_written"] == pytest.approx(gather_bytes / 1e9, abs=1e-3)
  assert known["tpu_gather_floor_ms"] == pytest.approx(1e3 * 2 * gather_bytes / 819e9, abs=1e-3)
  # Two programs add up; an unknown chip gets cycles but no milliseconds.
  unknown = tpu_cost.summarize([_MODULE, _MODULE], "TPU v9")
  assert unknown["tpu_estimated_mcycles"] == pytest.approx(0.36)
  assert "tpu_estimated_ms" not in unknown and "tpu_gather_floor_ms" not in unknown


def test_chips_by_the_names_libtpu_gives_them():
  from benchmarks import flop_count

  # A v5e calls itself "TPU v5 lite", a v5p just "TPU v5".
  assert tpu_cost.chip("TPU v5 lite") == (1.5e9, 819e9)
  assert tpu_cost.chip("TPU v5") == (1.75e9, 2765e9)
  assert tpu_cost.chip("TPU v4") == (1.05e9, 1228e9)
  assert tpu_cost.chip("NVIDIA H200") is None
  assert flop_count.peak_flops("TPU v5 lite", "bfloat16") == 197e12
  assert flop_count.peak_flops("TPU v5", "bfloat16") == 459e12


def test_tpu_topology_needs_libtpu_or_names_the_slice():
  from benchmarks import static_benchmark

  if importlib.util.find_spec("libtpu") is None:
    # CI has no libtpu: the error says what to install.
    with pytest.raises(ValueError, match=r"--tpu_topology v5e:2x2: .*pip install 'jax\[tpu\]"):
      static_benchmark.tpu_devices("v5e:2x2")
  else:
    devices = static_benchmark.tpu_devices("v5e:2x2")
    assert len(devices) == 4 and devices[0].platform == "tpu"
    with pytest.raises(ValueError, match="--tpu_topology v5e:3x5: "):
      static_benchmark.tpu_devices("v5e:3x5")
