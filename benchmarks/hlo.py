"""The one parser of optimised HLO text that the lab's tools share.

`parse_hlo_module` reads every instruction of every computation (fusion
bodies included) with its operands, called computations and custom-call
target; `op_name` reads the JAX name scope XLA keeps in an instruction's
metadata. flop_count, hlo_traffic, profile_summary and tpu_cost build on it.
"""

import dataclasses
import re

Shape = tuple[int, ...]

_LINE = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*?)\s([\w\-]+)\((.*)$")
_COMMENT = re.compile(r"/\*.*?\*/")
_DIMS = re.compile(r"\b[a-z][a-z0-9]*\[([\d,]*)\]")
_TARGET = re.compile(r'custom_call_target="([^"]*)"')
# Fusion bodies (calls=) and called computations (to_apply=: a call, such as
# a GPU command buffer, or a reduction's combiner).
_CALLS = re.compile(r"(?:calls|to_apply)=\{?%?([\w.\-]+)")
_OP_NAME = re.compile(r'op_name="([^"]*)"')


def op_name(line: str) -> str:
  """The JAX name scope of an instruction ('jit(f)/.../conv_0/conv'), or ''."""
  match = _OP_NAME.search(line)
  return match.group(1) if match else ""


@dataclasses.dataclass(frozen=True)
class HloInstruction:
  computation: str
  name: str
  opcode: str
  shape: Shape | None  # the result's (a tuple's first element's)
  result_type: str  # as printed: "bf16[8,32]{1,0}", "(f32[4], u8[0])"
  operands: tuple[str, ...]
  inline_shapes: tuple[Shape | None, ...]  # operand shapes printed in the call, if any
  called: tuple[str, ...]  # computations it calls (fusion bodies, ...)
  target: str  # a custom-call's target ("__cudnn$convForward"), else ""
  line: str


def parse_hlo_module(text: str) -> tuple[list[HloInstruction], str]:
  """The instructions of an optimised HLO module's text and its ENTRY's name."""
  instructions, computation, entry = [], "", ""
  for raw in text.splitlines():
    line = _COMMENT.sub("", raw)  # '/*index=5*/' tags in long signatures
    match = _LINE.match(line)
    if match is None:
      if (
        line[:1] not in ("", " ", "\t")
        and line.rstrip().endswith("{")
        and (not line.startswith("HloModule"))
      ):
        words = line.split()
        is_entry = words[0] == "ENTRY"
        computation = words[int(is_entry)].lstrip("%")
        entry = computation if is_entry else entry
      continue
    name, result, opcode, rest = match.groups()
    target = _TARGET.search(line)
    operands = _operands(rest)
    instructions.append(
      HloInstruction(
        computation,
        name,
        opcode,
        first_shape(result),
        result,
        tuple(n for n, _ in operands),
        tuple(shape for _, shape in operands),
        tuple(_CALLS.findall(line)),
        target.group(1) if target else "",
        line,
      )
    )
  return instructions, entry


def first_shape(text: str) -> Shape | None:
  match = _DIMS.search(text)
  if match is None:
    return None
  return tuple(int(d) for d in match.group(1).split(",") if d)


def _operands(rest: str) -> list[tuple[str, Shape | None]]:
  """(name, inline shape) of each operand, from the text after 'opcode('."""
  depth, end = 0, len(rest)
  for i, char in enumerate(rest):
    if char in "([{":
      depth += 1
    elif char in ")]}":
      if depth == 0:
        end = i
        break
      depth -= 1
  names, depth, current = [], 0, ""
  for char in rest[:end] + ",":
    if char in "([{":
      depth += 1
    elif char in ")]}":
      depth -= 1
    if char == "," and depth == 0:
      if current.strip():
        names.append((current.split()[-1].lstrip("%"), first_shape(current)))
      current = ""
    else:
      current += char
  return names
