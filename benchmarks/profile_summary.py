"""Where the device time goes: a jax.profiler trace summarised as JSON.

`summarize(trace_dir, hlo_texts, calls)` reads the newest `*.trace.json.gz`
that `jax.profiler.trace(trace_dir)` wrote, takes the device's op events (GPU
or TPU streams; on CPU, XLA's thunks on the host) and attributes each to the
optimised-HLO instruction it ran, which `compiled.as_text()` describes. It
reports, per profiled call:

- busy_ms and wall_ms (first to last op): their gap is time the device
  waited, for the host or for a sync;
- by_category: convolution, matmul, reduction, elementwise, layout (copies
  and transposes), collective, other, unattributed (events whose op the
  HLO does not name, e.g. a library kernel without an `hlo_op` tag);
- by_scope: the model scope of the op's `op_name` ("Generator/block_3"),
  split into forward and backward (ops under a transpose(...) transform);
- top_ops: the slowest instructions with their category and scope, and for
  convolutions and matrix products their GFLOP per call and achieved TFLOP/s
  (counted from the HLO shapes by flop_count, cuDNN and cuBLAS calls
  included), for every kernel its bytes moved and achieved GB/s
  (hlo_traffic), so the inefficient layers and the slow memory kernels (a
  gather, a scatter with atomics) stand out;
- gflop (all devices together) and, per device, tflops_by_category and
  tflops_busy (the rate while a device is busy). With several devices each
  op's per-device FLOPs count once per device that ran it, and its time is
  summed over them.

No TensorFlow or TensorBoard is needed: only the trace's JSON. benchmark.py
calls it for `--profile_dir` and saves the HLO beside the trace (`save_hlo`),
so `summarize_dir(trace_dir, calls)` can redo a summary from the folder alone,
e.g. on a CPU machine from a GPU run's folder.
"""

import collections
import dataclasses
import glob
import gzip
import json
import os
import re

from benchmarks import flop_count, hlo, hlo_traffic

_COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
_LAYOUT = ("copy", "transpose", "copy-start", "copy-done", "bitcast")
# Derived trace lines that repeat the kernels' time on a device.
_DERIVED_LINES = re.compile(r"XLA Modules|XLA Ops|Steps|Framework|TensorFlow|Source|Launch")


@dataclasses.dataclass(frozen=True)
class HloOp:
  category: str
  scope: str
  backward: bool
  flops: float = 0.0  # per run of the module
  bytes: int = 0  # read and written by the kernel (top-level ops only)


def _category(opcode: str, body_opcodes: set[str], target: str, line: str) -> str:
  everything = body_opcodes | {opcode}
  if "conv" in target.lower() or "convolution" in everything:
    return "convolution"
  if "dot" in everything or any(t in target.lower() for t in ("gemm", "matmul", "cublas")):
    return "matmul"
  if any(c in everything for c in _COLLECTIVES):
    return "collective"
  if everything <= set(_LAYOUT) | {"parameter", "fusion", "tuple", "get-tuple-element"} and (
    everything & set(_LAYOUT)
  ):
    return "layout"
  if opcode == "fusion" and "kind=kInput" in line or "reduce" in everything:
    return "reduction"
  if opcode in (
    "fusion",
    "add",
    "multiply",
    "subtract",
    "divide",
    "maximum",
    "select",
    "convert",
    "exponential",
    "rsqrt",
    "negate",
    "compare",
    "pad",
    "concatenate",
    "slice",
    "dynamic-slice",
    "dynamic-update-slice",
    "broadcast",
    "gather",
    "scatter",
    "reverse",
    "iota",
    "clamp",
    "minimum",
    "log",
    "sqrt",
    "tanh",
  ):
    return "elementwise"
  return "other"


def scope_of(op_name: str) -> tuple[str, bool]:
  """'jit(f)/transpose(jvp(Generator))/block_3/conv_0/conv' -> ('Generator/block_3', True)."""
  parts, backward = [], False
  for part in op_name.split("/"):
    if part.startswith("jit(") or not part:
      continue
    backward |= part.startswith("transpose(")
    inner = re.sub(r"^(?:\w+\()+", "", part).rstrip(")")
    if inner:
      parts.append(inner)
  # The last part is the primitive (conv_general_dilated, add, ...).
  return "/".join(parts[:-1][:2]) or "(top level)", backward


def module_name(text: str) -> str:
  """The name of an HLO module ('HloModule jit_generator_step, ...')."""
  match = re.match(r"\s*HloModule\s+([\w.\-]+)", text)
  return match.group(1) if match else ""


def parse_hlo(text: str) -> dict[str, HloOp]:
  """Optimised HLO text -> {instruction name: HloOp} for every instruction."""
  instructions, _ = hlo.parse_hlo_module(text)
  bodies: dict[str, set[str]] = collections.defaultdict(set)
  body_op_names: dict[str, str] = {}
  for i in instructions:
    bodies[i.computation].add(i.opcode)
    op_name = hlo.op_name(i.line)
    if "/" in op_name:
      body_op_names.setdefault(i.computation, op_name)
  flops = flop_count.hlo_flops(text)
  traffic = {k.name: k.bytes_read + k.bytes_written for k in hlo_traffic.entry_traffic(text)}
  ops = {}
  for i in instructions:
    called = i.called[0] if i.called else ""
    body = set(bodies.get(called, ()))
    op_name = hlo.op_name(i.line)
    # A fusion XLA made without metadata is named by what it computes.
    full = op_name or body_op_names.get(called)
    scope, backward = scope_of(full) if full else ("(unnamed)", False)
    ops[i.name] = HloOp(
      _category(i.opcode, body, i.target, i.line),
      scope,
      backward,
      flops.get(i.name, 0.0),
      traffic.get(i.name, 0),
    )
  return ops


def save_hlo(trace_dir: str, hlo_texts: list[str]) -> None:
  """Writes each module's optimised HLO as trace_dir/<module>.hlo.txt.gz."""
  os.makedirs(trace_dir, exist_ok=True)
  for text in hlo_texts:
    with gzip.open(
      os.path.join(trace_dir, f"{module_name(text) or 'module'}.hlo.txt.gz"), "wt"
    ) as f:
      f.write(text)


def summarize_dir(trace_dir: str, calls: int, top: int = 25) -> dict:
  """summarize() with the HLO that save_hlo left in trace_dir."""
  paths = sorted(glob.glob(os.path.join(trace_dir, "*.hlo.txt.gz")))
  if not paths:
    raise FileNotFoundError(f"{trace_dir}: no *.hlo.txt.gz (written by save_hlo)")
  texts = []
  for path in paths:
    with gzip.open(path, "rt") as f:
      texts.append(f.read())
  return summarize(trace_dir, texts, calls, top)


def newest_trace(trace_dir: str) -> str:
  paths = glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True)
  if not paths:
    raise FileNotFoundError(f"{trace_dir}: no *.trace.json.gz (was jax.profiler.trace used?)")
  return max(paths, key=os.path.getmtime)


def op_events(trace: dict) -> list[dict]:
  """The trace's device op events (ph 'X'), derived summary lines left out."""
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  processes, threads = {}, {}
  for e in events:
    if e.get("ph") == "M" and e.get("name") == "process_name":
      processes[e["pid"]] = e["args"]["name"]
    if e.get("ph") == "M" and e.get("name") == "thread_name":
      threads[(e["pid"], e.get("tid"))] = e["args"]["name"]
  devices = {pid for pid, name in processes.items() if "/device:" in name}
  spans = [e for e in events if e.get("ph") == "X" and "dur" in e]
  if devices:
    on_device = [e for e in spans if e["pid"] in devices]

    def line(e):
      return threads.get((e["pid"], e.get("tid")), "")

    streams = [e for e in on_device if line(e).startswith("Stream")]
    xla_ops = [e for e in on_device if line(e) == "XLA Ops"]
    # Kernels tagged with their HLO op are the finest record; without tags,
    # the derived "XLA Ops" line names each op (library kernels do not).
    if any("hlo_op" in e.get("args", {}) for e in streams) or (streams and not xla_ops):
      return streams
    if xla_ops:
      return xla_ops
    return [e for e in on_device if not _DERIVED_LINES.search(line(e))]
  return [e for e in spans if "hlo_op" in e.get("args", {}) and not e["name"].startswith("end:")]


def _device(event: dict) -> object:
  """Which device ran an op event: CPU thunks name it; GPU/TPU events sit in
  a process per device."""
  return event.get("args", {}).get("device_ordinal", event["pid"])


def _busy(intervals: list[tuple[float, float]]) -> float:
  total, end = 0.0, float("-inf")
  for start, stop in sorted(intervals):
    if stop > end:
      total += stop - max(start, end)
      end = stop
  return total


def summarize(trace_dir: str, hlo_texts: list[str], calls: int, top: int = 25) -> dict:
  """Per-call summary of the newest trace in trace_dir (see the module doc)."""
  # Instruction names repeat across modules (each step is one module).
  modules = {module_name(text): parse_hlo(text) for text in hlo_texts}
  anywhere: dict[str, tuple[str, HloOp]] = {}
  for module, ops in modules.items():
    for name, op in ops.items():
      anywhere.setdefault(name, (module, op))
      # Kernel names are instruction names with '.' made '_' when no tag says.
      anywhere.setdefault(name.replace(".", "_").replace("-", "_"), (module, op))
  with gzip.open(newest_trace(trace_dir)) as f:
    events = op_events(json.load(f))
  if not events:
    raise ValueError(f"{trace_dir}: the trace holds no device op events")
  per_op: dict[str, float] = collections.Counter()
  categories: dict[str, float] = collections.Counter()
  scopes: dict[str, dict[str, float]] = collections.defaultdict(collections.Counter)
  info: dict[str, tuple[str, str]] = {}
  # FLOPs per call: the op's per-device count on each device that ran it
  # (an op may run as several kernels on one device).
  op_flops: dict[str, float] = {}
  op_bytes: dict[str, float] = {}
  op_devices: dict[str, set] = collections.defaultdict(set)
  device_spans: dict[object, list] = collections.defaultdict(list)
  for e in events:
    args = e.get("args", {})
    tag = str(args.get("hlo_op", "")).lstrip("%")
    module = str(args.get("hlo_module", ""))
    op = modules.get(module, {}).get(tag)
    if op is None:
      module, op = anywhere.get(tag or e["name"], (module, None))
    name = f"{module}/{tag or e['name']}" if module else tag or e["name"]
    ms = e["dur"] / 1e3
    per_op[name] += ms
    category = op.category if op else "unattributed"
    categories[category] += ms
    scope = op.scope if op else "(unattributed)"
    scopes[scope]["backward" if op and op.backward else "forward"] += ms
    info[name] = (category, scope)
    device = _device(e)
    op_devices[name].add(device)
    op_flops[name] = (op.flops if op else 0.0) * len(op_devices[name])
    op_bytes[name] = (op.bytes if op else 0) * len(op_devices[name])
    device_spans[device].append((e["ts"], e["ts"] + e["dur"]))
  first = min(e["ts"] for e in events)
  last = max(e["ts"] + e["dur"] for e in events)
  per_call = 1.0 / max(calls, 1)
  round3 = lambda v: round(v * per_call, 3)  # noqa: E731
  category_flops: dict[str, float] = collections.Counter()
  for name, flops in op_flops.items():
    category_flops[info[name][0]] += flops
  busy_ms = _busy([(e["ts"], e["ts"] + e["dur"]) for e in events]) / 1e3 * per_call
  # Rates are per device: FLOPs over the device time that ran them.
  device_busy_ms = sum(_busy(spans) for spans in device_spans.values()) / 1e3 * per_call

  def tflops(flops: float, ms: float) -> float:
    return round(flops / (ms * per_call) / 1e9, 3) if ms else 0.0

  def top_op(name: str, ms: float) -> dict:
    entry = {"op": name, "category": info[name][0], "scope": info[name][1], "ms": round3(ms)}
    if op_flops[name]:
      entry.update(gflop=round(op_flops[name] / 1e9, 3), tflops=tflops(op_flops[name], ms))
    if op_bytes[name]:
      entry.update(
        mbytes=round(op_bytes[name] / 1e6, 3), gbps=round(op_bytes[name] / (ms * per_call) / 1e6, 1)
      )
    return entry

  return {
    "events": len(events),
    "busy_ms": round(busy_ms, 3),
    "op_ms": round3(sum(per_op.values())),
    "wall_ms": round3((last - first) / 1e3),
    "by_category": {k: round3(v) for k, v in categories.most_common()},
    "by_scope": {
      k: {d: round3(v) for d, v in scopes[k].items()}
      for k in sorted(scopes, key=lambda k: -sum(scopes[k].values()))[:top]
    },
    "gflop": round(sum(op_flops.values()) / 1e9, 3),
    "tflops_busy": round(sum(op_flops.values()) / device_busy_ms / 1e9, 3)
    if device_busy_ms
    else 0.0,
    "tflops_by_category": {k: tflops(v, categories[k]) for k, v in category_flops.items() if v},
    "top_ops": [top_op(k, v) for k, v in per_op.most_common(top)],
  }
