"""What a compiled XLA program does, op by op: kernels, FLOPs, memory traffic.

Reads an optimised HLO module's text (`compiled.as_text()`), so it works on
programs compiled for an accelerator this machine does not have (see
benchmarks.static_benchmark). Each top-level op of the ENTRY computation is one
kernel (a fusion, a cuDNN or cuBLAS call, a copy; a `call`, such as a CUDA
graph of several kernels, counts those kernels); its traffic is the bytes
it writes plus the bytes it reads, where an operand that the fused body only
slices or gathers from (directly or after elementwise ops) counts the
slices' bytes, not the whole operand. A fusion whose root is a
dynamic-update-slice or scatter into one of its parameters writes only the
update: XLA's GPU backend runs it in place (buffer assignment gives the fusion its
operand's buffer, and copy insertion adds an explicit copy kernel where it
cannot), so that operand is neither read nor rewritten in full.

`summarize` adds a roofline floor: each op takes at least its FLOPs at the
device's peak and its bytes at the device's bandwidth. Real kernels are
slower (cuDNN rarely runs at peak); the floor's use is comparing two versions
of a program, and seeing which ops move the most memory.
"""

import collections
import dataclasses
import re

from benchmarks import flop_count, hlo

_BYTES = {
  "pred": 1,
  "s8": 1,
  "u8": 1,
  "f8e4m3fn": 1,
  "f8e5m2": 1,
  "s16": 2,
  "u16": 2,
  "f16": 2,
  "bf16": 2,
  "s32": 4,
  "u32": 4,
  "f32": 4,
  "s64": 8,
  "u64": 8,
  "f64": 8,
  "c64": 8,
  "c128": 16,
}
_ARRAY = re.compile(r"\b([a-z][a-z0-9]*)\[([\d,]*)\]")
# Ops that launch no kernel or only name a buffer.
_FREE = {
  "parameter",
  "constant",
  "get-tuple-element",
  "tuple",
  "bitcast",
  "after-all",
  "partition-id",
  "replica-id",
}
# A fused parameter read only through these ops costs their outputs' bytes.
_PARTIAL_READS = {"slice", "dynamic-slice", "gather"}
# Ops that map each input element to the output element at the same index:
# a slice after them reads only the sliced elements of their inputs (the
# emitter computes a fusion's values per output element).
_ELEMENTWISE = {
  "convert",
  "bitcast",
  "reshape",
  "add",
  "subtract",
  "multiply",
  "divide",
  "maximum",
  "minimum",
  "negate",
  "abs",
  "exponential",
  "log",
  "sqrt",
  "rsqrt",
  "tanh",
  "select",
  "compare",
  "and",
  "or",
  "not",
  "clamp",
  "power",
}
_TO_APPLY = re.compile(r"to_apply=%?([\w.\-]+)")


@dataclasses.dataclass(frozen=True)
class OpTraffic:
  name: str
  category: str  # "cudnn$convForward", "loop_gather_fusion", "copy", ...
  flops: float
  bytes_read: int
  bytes_written: int


def _elements(type_text: str) -> int:
  count = 1
  for d in _ARRAY.search(type_text).group(2).split(","):
    count *= int(d) if d else 1
  return count


def array_bytes(type_text: str) -> int:
  """Bytes of every array in a printed HLO type ("(bf16[2,3]{1,0}, u8[0])")."""
  total = 0
  for dtype, dims in _ARRAY.findall(type_text):
    if dtype in _BYTES:
      count = 1
      for d in dims.split(","):
        count *= int(d) if d else 1
      total += count * _BYTES[dtype]
  return total


def _category(op: hlo.HloInstruction) -> str:
  if op.target:
    return op.target
  if op.opcode == "fusion":
    return re.sub(r"(\.\d+)+$", "", op.name)
  return op.opcode


def _in_place_update(members: list[hlo.HloInstruction]) -> tuple[str, int] | None:
  """(parameter name, update bytes) of a fusion body rooted at a
  dynamic-update-slice of a parameter or a scatter into one, which XLA runs
  in place."""
  root = next((m for m in members if m.line.lstrip().startswith("ROOT ")), None)
  if root is None:
    return None
  if root.opcode == "dynamic-update-slice":
    target, update = root.operands[0], root.operands[1]
  elif root.opcode == "scatter" and len(root.operands) == 3:  # operand, indices, updates
    target, update = root.operands[0], root.operands[2]
  else:
    return None
  shapes = {m.name: m for m in members}
  if target not in shapes or shapes[target].opcode != "parameter" or update not in shapes:
    return None
  if sum(target in m.operands for m in members) > 1:
    return None  # the fusion also reads the buffer it updates
  return target, array_bytes(shapes[update].result_type)


def _written(op: hlo.HloInstruction) -> int:
  if op.opcode == "custom-call" and op.result_type.startswith("("):
    # A library call's tuple ends with its scratch space (u8[...]): not data.
    parts = re.findall(r"[a-z][a-z0-9]*\[[\d,]*\]", op.result_type)
    return sum(array_bytes(p) for p in parts if not p.startswith("u8["))
  return array_bytes(op.result_type)


def entry_traffic(hlo_text: str) -> list[OpTraffic]:
  """One OpTraffic per kernel of the module's ENTRY computation, in order."""
  instructions, entry = hlo.parse_hlo_module(hlo_text)
  flops = flop_count.hlo_flops(hlo_text)
  by_name = {i.name: i for i in instructions}
  body: dict[str, list[hlo.HloInstruction]] = collections.defaultdict(list)
  for i in instructions:
    body[i.computation].append(i)

  def operand_reads(op) -> list[int]:
    reads = [array_bytes(by_name[n].result_type) if n in by_name else 0 for n in op.operands]
    if op.opcode != "fusion" or not op.called:
      return reads
    members = body.get(op.called[0], [])
    users = collections.defaultdict(list)
    for m in members:
      for operand in set(m.operands):
        users[operand].append(m)
    shapes = {m.name: m.result_type for m in members}
    in_place = _in_place_update(members)

    def fraction_read(name: str) -> float:
      """The share of `name`'s elements that the fusion's outputs need."""
      if not users[name]:
        return 1.0  # an output of the fusion
      total = 0.0
      for u in users[name]:
        if u.opcode in _PARTIAL_READS and u.operands[0] == name:
          # Only the data operand of a slice or gather is read partially.
          total += _elements(u.result_type) / _elements(shapes[name])
        elif u.opcode in _ELEMENTWISE and _elements(u.result_type) == _elements(shapes[name]):
          total += fraction_read(u.name)
        else:
          return 1.0
      return min(total, 1.0)

    for m in members:
      if m.opcode == "parameter":
        index = int(m.line.split("parameter(")[1].split(")")[0])
        if index < len(reads):
          if in_place and m.name == in_place[0]:
            reads[index] = 0  # the buffer written in place; its other cells stay
          else:
            reads[index] = round(reads[index] * fraction_read(m.name))
    return reads

  def written(op) -> int:
    if op.opcode == "fusion" and op.called:
      in_place = _in_place_update(body.get(op.called[0], []))
      if in_place:
        return in_place[1]
    return _written(op)

  def kernels(computation: str):
    for op in body[computation]:
      if op.opcode in _FREE:
        continue
      called = _TO_APPLY.search(op.line) if op.opcode == "call" else None
      if called:  # a command buffer (CUDA graph) or other call: its kernels
        yield from kernels(called.group(1))
      else:
        yield OpTraffic(
          op.name, _category(op), flops.get(op.name, 0.0), sum(operand_reads(op)), written(op)
        )

  return list(kernels(entry))


def summarize(
  hlo_texts: list[str],
  peak_flops: float | None = None,
  bandwidth: float | None = None,
  top: int = 12,
) -> dict:
  """Totals, per-category totals and the heaviest kernels of the modules.

  With the device's peak FLOP/s and memory bandwidth (bytes/s), also the
  roofline floor in milliseconds, split into ops with FLOPs (convolutions,
  matmuls) and memory-only ops.
  """
  ops = [op for text in hlo_texts for op in entry_traffic(text)]

  def floor_ms(op: OpTraffic) -> float:
    return 1e3 * max(op.flops / peak_flops, (op.bytes_read + op.bytes_written) / bandwidth)

  timed = bool(peak_flops and bandwidth)
  categories: dict[str, dict] = {}
  for op in ops:
    c = categories.setdefault(op.category, {"kernels": 0, "gflop": 0.0, "gbytes": 0.0})
    c["kernels"] += 1
    c["gflop"] += op.flops / 1e9
    c["gbytes"] += (op.bytes_read + op.bytes_written) / 1e9
    if timed:
      c["floor_ms"] = c.get("floor_ms", 0.0) + floor_ms(op)
  order = sorted(categories, key=lambda k: -categories[k]["gbytes"])
  summary = {
    "kernels": len(ops),
    "gflop": sum(op.flops for op in ops) / 1e9,
    "gbytes": sum(op.bytes_read + op.bytes_written for op in ops) / 1e9,
    "gbytes_memory_only_ops": sum(op.bytes_read + op.bytes_written for op in ops if not op.flops)
    / 1e9,
    "by_category": {k: {f: round(v, 3) for f, v in categories[k].items()} for k in order},
    "heaviest": [
      {
        "name": op.name,
        "category": op.category,
        "gflop": round(op.flops / 1e9, 2),
        "mbytes": round((op.bytes_read + op.bytes_written) / 1e6, 1),
      }
      for op in sorted(ops, key=lambda o: -(o.bytes_read + o.bytes_written))[:top]
    ],
  }
  if timed:
    summary["floor_ms"] = sum(floor_ms(op) for op in ops)
    summary["floor_ms_ops_with_flops"] = sum(floor_ms(op) for op in ops if op.flops)
    summary["floor_ms_memory_only_ops"] = sum(floor_ms(op) for op in ops if not op.flops)
  return summary
