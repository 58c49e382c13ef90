"""Collective traffic of a compiled XLA program, read from its HLO text.

Counts every all-gather, reduce-scatter, all-reduce, all-to-all and collective-permute (and their
async -done halves), multiplied by the trip counts of the while loops around them (a scanned block
stack runs its body `depth` times but prints it once). Each collective is measured by the whole
tensor it moves across its group: an all-gather by its result, a reduce-scatter by its operand
(result x group size), the others by their result. FSDP's expected volume per step is then about
3x the parameter bytes (gather for the forward pass, again for the backward, scatter the gradients).
"""
from __future__ import annotations

import re

KINDS = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")
_BYTES = {"pred": 1, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1, "s16": 2, "u16": 2, "f16": 2,
          "bf16": 2, "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8,
          "c128": 16}
_COMPUTATION = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) (?:\(.*\) -> .*)?\{\s*$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?[\w.\-]+ = (.+?) ([\w\-]+)\((.*)$")
_ARRAY = re.compile(r"(\w+)\[([\d,]*)\]")
_TRIP_COUNT = re.compile(r'"known_trip_count":\{"n":"(\d+)"')
_CONDITION = re.compile(r"condition=%?([\w.\-]+)")
_CONSTANT = re.compile(r"^\s*%?([\w.\-]+) = s32\[\]\S* constant\((\d+)\)")
# Operands print as `%name`, or `type %name` in some HLO dumps.
_LESS_THAN = re.compile(r"compare\((?:\S+ )?%?[\w.\-]+, (?:\S+ )?%?([\w.\-]+)\), direction=LT")
_CALLEES = re.compile(
    r"(?:body|to_apply|calls|branch_computations)=\{?%?([\w.\-]+(?:, %?[\w.\-]+)*)")
_IOTA_GROUPS = re.compile(r"replica_groups=\[(\d+),(\d+)\]")
_LIST_GROUPS = re.compile(r"replica_groups=\{\{([\d,]*)\}")
_MESH_GROUPS = re.compile(r"replica_groups=mesh\[([^\]]*)\] \{([^}]*)\}")


def _array_bytes(type_text: str) -> int:
  total = 0
  for dtype, dims in _ARRAY.findall(type_text):
    count = 1
    for d in filter(None, dims.split(",")):
      count *= int(d)
    total += count * _BYTES.get(dtype, 4)
  return total


def _group_size(attributes: str) -> int:
  """Devices per replica group, in any of the three ways HLO prints groups."""
  if m := _MESH_GROUPS.search(attributes):  # mesh['a'=8,'b'=1] {'a'}
    sizes = dict(re.findall(r"'(\w+)'=(\d+)", m.group(1)))
    size = 1
    for axis in re.findall(r"'(\w+)'", m.group(2)):
      size *= int(sizes[axis])
    return size
  if m := _IOTA_GROUPS.search(attributes):
    return int(m.group(2))
  if m := _LIST_GROUPS.search(attributes):
    return len(m.group(1).split(","))
  return 1


def _parse(hlo_text: str):
  """{computation: ([(kind, bytes)], [(callee, multiplier)])} and the entry computation's name.

  A while loop's multiplier is its known_trip_count where XLA prints one (CPU, GPU), else the
  bound N of its condition `i < N` (TPU; a scan counts from 0 in steps of 1)."""
  computations, entry, current = {}, None, None
  constants, bounds, loops = {}, {}, []  # loops: (computation, body, condition, known trips)
  for line in hlo_text.splitlines():
    if m := _COMPUTATION.match(line):
      current = m.group(1)
      computations[current] = ([], [])
      if line.startswith("ENTRY"):
        entry = current
      continue
    if m := _CONSTANT.match(line):
      constants[(current, m.group(1))] = int(m.group(2))
    if m := _LESS_THAN.search(line):
      if (current, m.group(1)) in constants:
        bounds[current] = constants[(current, m.group(1))]
    if current is None or not (m := _INSTRUCTION.match(line)):
      continue
    result_type, opcode, rest = m.groups()
    kind = opcode[:-len("-done")] if opcode.endswith("-done") else opcode
    if kind in KINDS and not opcode.endswith("-start"):
      size = _array_bytes(result_type)
      if opcode.endswith("-done") and result_type.startswith("("):
        size = _array_bytes(result_type.split("),")[-1])  # a tuple-typed done: its last element
      if kind == "reduce-scatter":
        size *= _group_size(rest)
      channel = re.search(r"channel_id=(\d+)", rest)
      key = channel.group(1) if channel else f"{current}/{len(computations[current][0])}"
      computations[current][0].append((key, kind, size))
    if opcode == "while":
      known = _TRIP_COUNT.search(rest)
      body = re.search(r"body=%?([\w.\-]+)", rest).group(1)
      loops.append((current, body, _CONDITION.search(rest).group(1),
                    int(known.group(1)) if known else None))
      continue
    for callees in _CALLEES.findall(rest):
      for callee in callees.replace("%", "").split(", "):
        computations[current][1].append((callee, 1))
  for caller, body, condition, known in loops:
    computations[caller][1].append((body, known if known is not None else bounds.get(condition, 1)))
  return computations, entry


def collective_bytes(hlo_text: str) -> dict[str, int]:
  """Bytes moved per step by each kind of collective (see the module docstring), per device."""
  computations, entry = _parse(hlo_text)
  memo: dict[str, dict[str, tuple[str, int]]] = {}

  def visit(name: str, depth: int = 0) -> dict[str, tuple[str, int]]:
    """{channel: (kind, bytes)} of a computation and what it calls. TPU's async collectives
    appear in up to three fused computations (start, overlap, done) that share one channel id,
    so a channel counts once; a loop body's channels count once per trip."""
    if name in memo or name not in computations or depth > 64:
      return memo.get(name, {})
    ops, calls = computations[name]
    out = {key: (kind, size) for key, kind, size in ops}
    for callee, times in calls:
      for key, (kind, size) in visit(callee, depth + 1).items():
        out.setdefault(f"{callee}*{key}" if times != 1 else key, (kind, times * size))
    memo[name] = out
    return out

  totals = {kind: 0 for kind in KINDS}
  for kind, size in (visit(entry).values() if entry is not None else ()):
    totals[kind] += size
  return totals
