"""FLOPs of convolutions and matrix products, counted exactly from shapes.

XLA's `cost_analysis()` cannot be trusted across backends: on GPU it counts a
cuDNN convolution custom-call as (almost) nothing, so a bf16 training
iteration that needs ~29 TFLOP was reported as 113 GFLOP. Two exact counts
replace it:

- `jaxpr_flops(fn, *args)`: the *model* FLOPs of a function, from its jaxpr
  (every `conv_general_dilated` and `dot_general`, backward passes included
  when fn differentiates), keyed by the equation's name stack
  ("transpose(jvp(Generator))/block_3/conv_0"). Independent of the backend:
  the convention behind MFU. Elementwise work is not counted.
- `hlo_flops(text)`: per instruction of an optimised HLO module, the FLOPs it
  executes: plain convolutions and dots, cuDNN convolution and cuBLAS GEMM
  custom-calls (whose operands depend on the call's kind), and fusions (the
  sum over their bodies, e.g. Triton GEMMs). Channels XLA padded for tensor
  cores are counted, since they are executed.

Both count 2 FLOPs per multiply-add, and for a convolution only the
products of a kernel tap with a real input element: taps that land on zero
padding or between the elements of a dilated input (lhs_dilation, how JAX
writes the input gradient of a strided convolution) are not work. This makes
the count independent of how autodiff or XLA phrases a convolution: the
input and weight gradients of any convolution cost exactly its forward
count, whereas |output| * |kernel| / kernel[out] would charge the input
gradient of a stride-2 layer 4x. (A "SAME" 3x3 layer on a 32x32 map thus
counts 4 % less than the textbook |output| * |kernel| / kernel[out]; the
generator's convolutions read explicitly reflect-padded maps and match it.)
`peak_flops` gives the dense peak of known accelerators, for MFU.
"""

import collections
import dataclasses
import math
import re

from benchmarks import hlo
from benchmarks.hlo import Shape


@dataclasses.dataclass(frozen=True)
class ConvGeometry:
  """A convolution as XLA sees it, with dims given as in jax's ConvDimensionNumbers."""

  lhs: Shape
  rhs: Shape
  out: Shape
  lhs_spec: tuple[int, ...]  # batch, feature, spatial...
  rhs_spec: tuple[int, ...]  # output feature, input feature, spatial...
  out_spec: tuple[int, ...]  # batch, feature, spatial...
  strides: tuple[int, ...]
  padding: tuple[tuple[int, int], ...]
  lhs_dilation: tuple[int, ...]
  rhs_dilation: tuple[int, ...]


def _real_taps(n: int, m: int, k: int, stride: int, pad_lo: int, lhs_dil: int, rhs_dil: int) -> int:
  """(output, tap) pairs of one spatial dim whose tap reads a real input element."""
  last = (n - 1) * lhs_dil
  count = 0
  for t in range(k):
    for o in range(m):
      p = o * stride + t * rhs_dil - pad_lo
      count += 0 <= p <= last and p % lhs_dil == 0
  return count


def conv_flops(g: ConvGeometry) -> float:
  """2 x the multiply-adds of real input elements with kernel taps."""
  taps = 1
  for d in range(len(g.lhs_spec) - 2):
    taps *= _real_taps(
      g.lhs[g.lhs_spec[2 + d]],
      g.out[g.out_spec[2 + d]],
      g.rhs[g.rhs_spec[2 + d]],
      g.strides[d],
      g.padding[d][0],
      g.lhs_dilation[d],
      g.rhs_dilation[d],
    )
  per_tap = g.out[g.out_spec[0]] * g.out[g.out_spec[1]] * g.rhs[g.rhs_spec[1]]
  return 2.0 * per_tap * taps


def _dot_flops(out: Shape, lhs: Shape, lhs_contracting) -> float:
  return 2.0 * math.prod(out) * math.prod(lhs[d] for d in lhs_contracting)


def _sub_jaxprs(eqn):
  """(jaxpr, times) for each jaxpr an equation runs (pjit, remat, scan, ...)."""
  times = eqn.params.get("length", 1) if eqn.primitive.name == "scan" else 1
  for value in eqn.params.values():
    for item in value if isinstance(value, (list, tuple)) else (value,):
      inner = getattr(item, "jaxpr", item)  # ClosedJaxpr -> Jaxpr
      if hasattr(inner, "eqns"):
        yield inner, times


def _walk(jaxpr, prefix: str, counts: collections.Counter) -> None:
  for eqn in jaxpr.eqns:
    stack = "/".join(p for p in (prefix, str(eqn.source_info.name_stack)) if p)
    name = eqn.primitive.name
    if name == "conv_general_dilated":
      p = eqn.params
      numbers = p["dimension_numbers"]
      spatial = len(numbers.lhs_spec) - 2
      counts[stack] += conv_flops(
        ConvGeometry(
          eqn.invars[0].aval.shape,
          eqn.invars[1].aval.shape,
          eqn.outvars[0].aval.shape,
          tuple(numbers.lhs_spec),
          tuple(numbers.rhs_spec),
          tuple(numbers.out_spec),
          tuple(p["window_strides"]),
          tuple(tuple(q) for q in p["padding"]),
          tuple(p["lhs_dilation"] or (1,) * spatial),
          tuple(p["rhs_dilation"] or (1,) * spatial),
        )
      )
    elif name == "dot_general":
      (lhs_contracting, _), _ = eqn.params["dimension_numbers"]
      counts[stack] += _dot_flops(
        eqn.outvars[0].aval.shape, eqn.invars[0].aval.shape, lhs_contracting
      )
    elif name == "cond":
      # One branch runs; count the most expensive.
      branches = []
      for branch in eqn.params["branches"]:
        branch_counts = collections.Counter()
        _walk(branch.jaxpr, stack, branch_counts)
        branches.append(branch_counts)
      counts.update(max(branches, key=lambda c: sum(c.values())))
    else:
      # A while loop's trip count is unknown: its body is counted once.
      for inner, times in _sub_jaxprs(eqn):
        inner_counts = collections.Counter()
        _walk(inner, stack, inner_counts)
        for key, value in inner_counts.items():
          counts[key] += value * times


def jaxpr_flops(fn, *args, **kwargs) -> dict[str, float]:
  """{name stack: FLOPs} of the convolutions and dots of fn(*args, **kwargs).

  Traces fn abstractly (nothing runs); fn may be jitted. The name stack keeps
  autodiff's wrappers, so "transpose(jvp(...))" marks the backward pass.
  """
  import jax  # noqa: PLC0415 -- the HLO half of this module needs no JAX

  counts: collections.Counter = collections.Counter()
  _walk(jax.make_jaxpr(fn)(*args, **kwargs).jaxpr, "", counts)
  return dict(counts)


# --- optimised HLO -----------------------------------------------------------

_WINDOW = re.compile(r"window=\{([^}]*)\}")
_DIM_LABELS = re.compile(r"dim_labels=(\w+)_(\w+)->(\w+)")
_LHS_CONTRACTING = re.compile(r"lhs_contracting_dims=\{([\d,]*)\}")
_JSON_LHS_CONTRACTING = re.compile(r'"lhs_contracting_dimensions":\[([^\]]*)\]')


def _spec(labels: str, first: str, second: str) -> tuple[int, ...]:
  """'b01f' -> (0, 3, 1, 2): the dims of first, second, then spatial 0, 1, ..."""
  spatial = sorted((c, i) for i, c in enumerate(labels) if c.isdigit())
  return (labels.index(first), labels.index(second), *(i for _, i in spatial))


def _window(line: str, spatial: int) -> tuple:
  """(strides, padding, lhs_dilation, rhs_dilation) of an HLO window={...}."""
  match = _WINDOW.search(line)
  fields = dict(f.split("=", 1) for f in match.group(1).split()) if match else {}

  def ints(name: str, default: int) -> tuple[int, ...]:
    return (
      tuple(int(v) for v in fields[name].split("x")) if name in fields else ((default,) * spatial)
    )

  pads = (
    tuple(tuple(int(v) for v in re.findall(r"-?\d+", p)) for p in fields["pad"].split("x"))
    if "pad" in fields
    else ((0, 0),) * spatial
  )
  return ints("stride", 1), pads, ints("lhs_dilate", 1), ints("rhs_dilate", 1)


def _instruction_flops(
  opcode: str, target: str, out: Shape, operands: list[Shape | None], line: str
) -> float:
  labels = _DIM_LABELS.search(line)
  if opcode == "convolution" or (opcode == "custom-call" and "cudnn$conv" in target):
    if labels is None or len(operands) < 2:
      return 0.0
    # A cuDNN call keeps its forward convolution's window and dim_labels;
    # which of its shapes are that convolution's input, kernel and output
    # depends on the call's kind.
    if "BackwardInput" in target:
      lhs, rhs, fwd_out = out, operands[1], operands[0]
    elif "BackwardFilter" in target:
      lhs, rhs, fwd_out = operands[0], out, operands[1]
    else:
      lhs, rhs, fwd_out = operands[0], operands[1], out
    if lhs is None or rhs is None:
      return 0.0
    spatial = len(lhs) - 2
    return conv_flops(
      ConvGeometry(
        lhs,
        rhs,
        fwd_out,
        _spec(labels.group(1), "b", "f"),
        _spec(labels.group(2), "o", "i"),
        _spec(labels.group(3), "b", "f"),
        *_window(line, spatial),
      )
    )
  if opcode == "dot" or (opcode == "custom-call" and ("gemm" in target or "matmul" in target)):
    contracting = _LHS_CONTRACTING.search(line) or _JSON_LHS_CONTRACTING.search(line)
    if contracting is None or operands[0] is None:
      return 0.0
    dims = [int(d.strip().strip('"')) for d in contracting.group(1).split(",") if d.strip()]
    return _dot_flops(out, operands[0], dims)
  return 0.0


def _parse_hlo(text: str) -> tuple[dict[str, float], list[str]]:
  """({instruction: FLOPs, fusions counting their bodies}, ENTRY's instructions)."""
  instructions, entry = hlo.parse_hlo_module(text)
  shapes = {i.name: i.shape for i in instructions}
  members: dict[str, list[str]] = collections.defaultdict(list)
  for i in instructions:
    members[i.computation].append(i.name)
  own = {
    i.name: _instruction_flops(
      i.opcode,
      i.target,
      i.shape or (),
      [inline or shapes.get(n) for n, inline in zip(i.operands, i.inline_shapes)],
      i.line,
    )
    for i in instructions
  }
  calls = {i.name: i.called for i in instructions if i.opcode in ("fusion", "call", "async-start")}

  def total(name: str, seen: frozenset) -> float:
    flops = own.get(name, 0.0)
    for computation_name in calls.get(name, ()):
      if computation_name not in seen:
        for member in members.get(computation_name, ()):
          flops += total(member, seen | {computation_name})
    return flops

  return {i.name: total(i.name, frozenset()) for i in instructions}, members[entry]


def hlo_flops(text: str) -> dict[str, float]:
  """{instruction name: FLOPs} for every instruction of an optimised HLO module
  that computes a convolution or dot; a fusion counts its body."""
  flops, _ = _parse_hlo(text)
  return {name: value for name, value in flops.items() if value}


def hlo_module_flops(text: str) -> float:
  """The FLOPs one run of the module executes (its ENTRY computation; a while
  loop's body would count once)."""
  flops, entry = _parse_hlo(text)
  return sum(flops[name] for name in entry)


# --- peaks ---------------------------------------------------------------------

# Dense peak FLOP/s by (device_kind substring, compute dtype), from the
# vendors' data sheets. float32 on NVIDIA GPUs is the TF32 tensor-core peak:
# XLA runs f32 convolutions and dots in TF32 at JAX's default precision.
_PEAKS = (
  ("H200", {"bfloat16": 989e12, "float32": 494e12}),
  ("H100", {"bfloat16": 989e12, "float32": 494e12}),  # SXM
  ("A100", {"bfloat16": 312e12, "float32": 156e12}),
  ("TPU v6", {"bfloat16": 918e12}),
  ("TPU v5p", {"bfloat16": 459e12}),
  ("TPU v5 lite", {"bfloat16": 197e12}),
  ("TPU v5e", {"bfloat16": 197e12}),
  ("TPU v4", {"bfloat16": 275e12}),
  ("TPU v5", {"bfloat16": 459e12}),  # how a v5p names itself (after "TPU v5 lite")
)


def peak_flops(device_kind: str, dtype: str) -> float | None:
  """The dense peak FLOP/s of a known accelerator in dtype, else None."""
  for kind, peaks in _PEAKS:
    if kind.lower() in device_kind.lower():
      return peaks.get(dtype)
  return None
