"""The TPU compiler's own cost estimates, read from a compiled program.

When libtpu compiles a program (also without a TPU: jax.experimental.topologies
describes a slice, and static_benchmark compiles for it), it annotates each
convolution and loop fusion of the optimised HLO with `estimated_cycles`, the
estimate of its cost model. Summed over the entry computation and divided by
the chip's clock, that is the compiler's estimate of one call's device time.
It is an estimate, not a measurement: the compiler uses it to choose tilings
and fusions, and for convolutions it is close to the FLOPs at the MXUs' peak.

Some kernels carry no estimate: the gathers that pad and index (fusions of
kind kCustom) and the async copies and slices that overlap with compute. The
gathers are counted apart, with the bytes they write, so that a floor for
them (bytes at the chip's HBM bandwidth, read and written) can be added.
"""

import collections
import dataclasses
import re

from benchmarks import hlo, hlo_traffic

# Clock (Hz) and HBM bandwidth (bytes/s) of the TPU chips whose clock follows
# from the published bf16 peak: peak = TensorCores x MXUs x 128 x 128 x 2 x clock.
# First match of a substring of the device kind (a v5p reports "TPU v5", a
# v5e "TPU v5 lite"). On the two-TensorCore chips the estimates count the
# chip's cycles: a 309 GFLOP convolution comes to 1.21 M cycles on a v5p,
# 447 TFLOP/s at 1.75 GHz.
_CHIPS = (
  ("TPU v5 lite", 1.5e9, 819e9),  # 197 TFLOP/s, 1 TensorCore x 4 MXUs
  ("TPU v5e", 1.5e9, 819e9),
  ("TPU v5", 1.75e9, 2765e9),  # v5p: 459 TFLOP/s, 2 TensorCores x 4 MXUs
  ("TPU v4", 1.05e9, 1228e9),  # 275 TFLOP/s, 2 TensorCores x 4 MXUs
)

# Instructions that launch no work of their own (the done half of an async
# copy or slice waits for its start).
_BOOKKEEPING = (
  "parameter",
  "constant",
  "get-tuple-element",
  "bitcast",
  "tuple",
  "reshape",
  "copy-done",
  "slice-done",
  "after-all",
)
_KIND = re.compile(r"kind=(k\w+)")
_CYCLES = re.compile(r'"estimated_cycles":"(\d+)"')


@dataclasses.dataclass(frozen=True)
class TpuOp:
  name: str
  opcode: str  # "fusion:kOutput" (a convolution), "fusion:kLoop", "copy", ...
  cycles: int | None  # None: the compiler gave no estimate
  bytes_written: int
  op_name: str  # the JAX scope, e.g. jit(generator_step)/.../block_0/conv_0/...


def chip(device_kind: str) -> tuple[float, float] | None:
  """(clock Hz, HBM bytes/s) of a known TPU chip, else None."""
  for kind, clock, bandwidth in _CHIPS:
    if kind.lower() in device_kind.lower():
      return clock, bandwidth
  return None


def entry_ops(hlo_text: str) -> list[TpuOp]:
  """The entry computation's instructions that launch work, with estimates."""
  instructions, entry = hlo.parse_hlo_module(hlo_text)
  if not entry:
    raise ValueError("no ENTRY computation in the HLO text")
  ops = []
  for i in instructions:
    if i.computation != entry or i.opcode in _BOOKKEEPING:
      continue
    kind = _KIND.search(i.line)
    cycles = _CYCLES.search(i.line)
    op_name = hlo.op_name(i.line)
    ops.append(
      TpuOp(
        i.name,
        i.opcode + (":" + kind.group(1) if kind else ""),
        int(cycles.group(1)) if cycles else None,
        hlo_traffic.array_bytes(i.result_type),
        op_name,
      )
    )
  return ops


def _scope(op_name: str) -> str:
  """jit(g)/transpose(jvp(Generator))/block_0/conv_0/x -> Generator/block_0 bw."""
  backward = "transpose(" in op_name
  parts = [p for p in re.sub(r"transpose\(|jvp\(|vmap\(|\)", "", op_name).split("/")[1:] if p]
  return "/".join(parts[:2]) + (" bw" if backward else "")


def summarize(hlo_texts: list[str], device_kind: str, top: int = 12) -> dict:
  """The compiler's estimated cycles (and ms, for a chip of known clock),
  the kernels without an estimate, and the costliest scopes."""
  ops = [op for text in hlo_texts for op in entry_ops(text)]
  estimated = [op for op in ops if op.cycles is not None]
  gathers = [op for op in ops if op.cycles is None and op.opcode == "fusion:kCustom"]
  by_kind = collections.Counter()
  by_scope = collections.Counter()
  for op in estimated:
    by_kind[op.opcode] += op.cycles
    by_scope[_scope(op.op_name)] += op.cycles
  cycles = sum(op.cycles for op in estimated)
  gather_bytes = sum(op.bytes_written for op in gathers)
  summary = {
    "tpu_estimated_kernels": len(estimated),
    "tpu_estimated_mcycles": round(cycles / 1e6, 3),
    "tpu_mcycles_by_kind": {k: round(v / 1e6, 3) for k, v in by_kind.most_common()},
    "tpu_costliest_scopes": {k: round(v / 1e6, 3) for k, v in by_scope.most_common(top)},
    "tpu_gathers_without_estimate": len(gathers),
    "tpu_gather_gbytes_written": round(gather_bytes / 1e9, 3),
  }
  known = chip(device_kind)
  if known:
    clock, bandwidth = known
    summary["tpu_estimated_ms"] = round(1e3 * cycles / clock, 3)
    # Each gather reads about what it writes.
    summary["tpu_gather_floor_ms"] = round(1e3 * 2 * gather_bytes / bandwidth, 3)
  return summary
