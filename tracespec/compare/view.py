"""The metadata of one rank of a trace, arranged for comparison.

Constraints: reads the tables only (already in memory once the trace is open), never tensor data;
no framework import. Records become Python objects one step at a time, grouped by (stage, node),
so that the comparison walks them without scanning the whole table again, and a long run's
millions of rows cost memory only as Arrow columns.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tracespec.errors import TableInvalidError
from tracespec.format.stats import TensorStats
from tracespec.storage import Part, Trace

__all__ = ["Call", "Node", "OpSite", "RankView", "Record", "SourceLocation", "StepRows", "framework_family", "read_node"]

STAGE_ORDER: Final = ("forward", "backward", "update")

_FRAMEWORK_FAMILIES: Final = {"pytorch": "torch", "paddlepaddle": "paddle"}

PARAMETER_LAYOUTS: Final = ("out_in", "in_out")
"""Values of a node's ``attrs.parameter_layout`` entries: how the recorded 2-D weight is laid out."""


def framework_family(name: str) -> str:
    """``torch`` for ``torch``/``pytorch``, ``paddle`` for ``paddle``/``paddlepaddle``, else the name."""
    lowered = name.lower()
    return _FRAMEWORK_FAMILIES.get(lowered, lowered)


@dataclass(frozen=True, slots=True)
class Node:
    """One node of the module tree."""

    id: int
    parent: int | None
    route: str
    class_name: str
    kind: str
    position: int
    layouts: tuple[tuple[str, str], ...] = ()
    """``attrs.parameter_layout`` as (slot, layout) pairs: the adapter's word on how it stored a
    parameter, which overrides the framework's built-in layout rule."""
    op: str | None = None
    """``attrs.op`` of an op node: the function it calls (``torch.Tensor.__mul__``)."""
    source: SourceLocation | None = None
    """``attrs.source`` of an op node: the line of forward code that calls it."""


@dataclass(frozen=True, slots=True)
class SourceLocation:
    """Where forward code calls an op."""

    file: str
    line: int
    function: str | None

    def __str__(self) -> str:
        return f"{os.path.basename(self.file)}:{self.line}"

    def to_json(self) -> dict[str, Any]:
        return {"file": self.file, "line": self.line, "function": self.function}


@dataclass(frozen=True, slots=True)
class OpSite:
    """Where an op node's calls come from: the module whose forward calls it, the function, the line."""

    module: str
    op: str | None
    source: SourceLocation | None

    def __str__(self) -> str:
        at = f" at {self.source}" if self.source else ""
        return f"{self.module or '(root)'}{at}"

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"module": self.module}
        if self.op is not None:
            doc["op"] = self.op
        if self.source is not None:
            doc["source"] = self.source.to_json()
        return doc


def read_node(trace: Trace, rank: int, row: dict[str, Any]) -> Node:
    """A node from one nodes-table row; its ``attrs`` are untrusted: read only where used, checked."""
    node = Node(row["node"], row["parent"], row["route"], row["class_name"], row["kind"], row["position"])
    text = row.get("attrs")
    if not isinstance(text, str) or not ("parameter_layout" in text or row["kind"] == "op"):
        return node
    where = f"{trace.path}: rank_{rank} nodes table, node {row['node']}"
    try:
        attrs = json.loads(text)
    except ValueError:
        raise TableInvalidError(f"{where}: attrs is not JSON") from None
    if not isinstance(attrs, dict):
        raise TableInvalidError(f"{where}: attrs is not a JSON object")
    layouts = attrs.get("parameter_layout")
    if layouts is not None and (
        not isinstance(layouts, dict)
        or not all(isinstance(slot, str) and value in PARAMETER_LAYOUTS for slot, value in layouts.items())
    ):
        raise TableInvalidError(
            f"{where}: attrs.parameter_layout must map parameter slots to one of {', '.join(PARAMETER_LAYOUTS)}"
        )
    op = attrs.get("op")
    if op is not None and not isinstance(op, str):
        raise TableInvalidError(f"{where}: attrs.op must be a string")
    source = attrs.get("source")
    if source is not None:
        if not (
            isinstance(source, dict)
            and isinstance(source.get("file"), str)
            and type(source.get("line")) is int
            and source["line"] >= 1
            and isinstance(source.get("function"), (str, type(None)))
        ):
            raise TableInvalidError(f"{where}: attrs.source must be {{file: string, line: integer >= 1, function: string}}")
        source = SourceLocation(source["file"], source["line"], source.get("function"))
    return dataclasses.replace(node, layouts=tuple(sorted(layouts.items())) if layouts else (), op=op, source=source)


@dataclass(frozen=True, slots=True)
class Call:
    """One call of a node in a (step, stage): ``begin``/``end`` are event-counter values."""

    node: int
    call: int
    begin: int
    end: int


@dataclass(frozen=True, slots=True)
class Record:
    """One tensor (or non-tensor value) record, as much as the comparison needs of it."""

    id: int
    step: int
    stage: str
    node: int
    call: int | None
    role: str
    slot: str
    dtype: str | None
    shape: tuple[int, ...] | None
    level: str | None
    hash: str | None
    array: str | None
    stats: TensorStats | None
    value: str | None

    @property
    def key(self) -> tuple[str, int | None, str]:
        """What pairs a record with its counterpart on a matched node: role, call, slot."""
        return (self.role, self.call, self.slot)


def _stats_of(row: dict[str, object]) -> TensorStats | None:
    if row["nan_count"] is None:
        return None
    shape = row["shape"] or []
    count = 1
    for extent in shape:  # type: ignore[attr-defined]
        count *= int(extent)
    return TensorStats(
        count=count,
        min=row["min"],  # type: ignore[arg-type]
        max=row["max"],  # type: ignore[arg-type]
        mean=row["mean"],  # type: ignore[arg-type]
        std=row["std"],  # type: ignore[arg-type]
        l2=row["l2"],  # type: ignore[arg-type]
        nan_count=int(row["nan_count"]),  # type: ignore[call-overload]
        inf_count=int(row["inf_count"] or 0),  # type: ignore[call-overload]
    )


class StepRows:
    """The rows of one table of a rank, sorted by step once and sliced per step (zero-copy).

    Long runs hold millions of rows: nothing here makes a Python object per row.
    """

    def __init__(self, part: Part, name: str, wanted: set[int] | None) -> None:
        table = getattr(part, name)
        steps = np.concatenate([piece.column("step").to_numpy() for piece in part.slices(name)])
        self.part = part
        self.name: str | None = name
        """Where the rows live; ``name`` None once sorted into memory of their own."""
        if len(steps) > 1 and bool(np.any(steps[1:] < steps[:-1])):
            order = np.argsort(steps, kind="stable")
            table, steps, self.name = table.take(order), steps[order], None
        starts = np.flatnonzero(np.diff(steps, prepend=steps[:1] - 1)) if len(steps) else np.zeros(0, np.int64)
        found, ends = steps[starts], np.append(starts[1:], len(steps))
        self.table = table
        self.bounds: dict[int, tuple[int, int]] = {
            int(step): (int(start), int(end))
            for step, start, end in zip(found, starts, ends)
            if wanted is None or int(step) in wanted
        }

    def of(self, step: int) -> pa.Table:
        """The rows of ``step`` (an empty table where it has none)."""
        start, end = self.bounds.get(step, (0, 0))
        return self.table.slice(start, end - start)

    def slices(self, start: int, stop: int) -> Iterator[pa.Table]:
        """Rows ``start`` to ``stop`` in slices, their pages released after each (``Part.slices``)."""
        if self.name is None:
            return iter([self.table.slice(start, stop - start)])
        return self.part.slices(self.name, start, stop)

    def release(self, steps: list[int]) -> None:
        """Release the pages of the rows of ``steps`` (read, and not needed again soon)."""
        if self.name is not None:
            self.part.maps[self.name].release(*self.span(steps))

    def span(self, steps: list[int]) -> tuple[int, int]:
        """The row range from the first of ``steps`` to the end of the last (steps sorted)."""
        present = [self.bounds[s] for s in steps if s in self.bounds]
        return (present[0][0], present[-1][1]) if present else (0, 0)


_CACHED_STEPS: Final = 3
"""Steps whose records a view keeps as Python objects at a time (besides the first step, which
alignment reads): the comparison walks steps in order, so memory stays that of a few steps."""


class RankView:
    """Nodes, calls and records of one rank of a trace, for the selected steps.

    Records and calls become Python objects one step at a time, on request (:meth:`step_records`,
    :meth:`calls_of`): a long run's millions of rows stay in Arrow columns.
    """

    def __init__(self, trace: Trace, rank: int, steps: list[int] | None = None) -> None:
        part = trace.parts[rank]
        self.trace = trace
        self.rank = rank
        self.framework = framework_family(trace.manifest.framework)
        self.nodes: dict[int, Node] = {}
        self.children: dict[int | None, list[int]] = defaultdict(list)
        for row in part.nodes.to_pylist():
            node = read_node(trace, rank, row)
            self.nodes[node.id] = node
        for node in self.nodes.values():
            self.children[node.parent].append(node.id)
        self._check_acyclic(trace)
        for kids in self.children.values():
            kids.sort(key=lambda n: (self.nodes[n].position, n))
        wanted = set(steps) if steps is not None else None
        self.call_rows = StepRows(part, "calls", wanted)
        self.tensor_rows = StepRows(part, "tensors", wanted)
        self.steps: list[int] = sorted(set(self.call_rows.bounds) | set(self.tensor_rows.bounds))
        self._calls: dict[int, dict[str, list[Call]]] = {}
        self._records: dict[int, dict[tuple[str, int], list[Record]]] = {}
        self._by_call: dict[tuple[int, str, int], dict[int | None, list[Record]]] = {}
        self.by_route = {node.route: node.id for node in reversed(list(self.nodes.values()))}
        self._first_begin: dict[int, int] = {}
        self._call_count: dict[int, int] = defaultdict(int)
        for call in self.calls_of(self.steps[0], "forward") if self.steps else []:
            self._call_count[call.node] += 1
            self._first_begin[call.node] = min(call.begin, self._first_begin.get(call.node, call.begin))

    def _evict(self, cache: dict[int, Any], step: int) -> None:
        """Keep the first step and the last few steps asked for."""
        if len(cache) < _CACHED_STEPS + 1:
            return
        for old in [s for s in cache if s != self.steps[0]][: len(cache) - _CACHED_STEPS]:
            del cache[old]
            for key in [k for k in self._by_call if k[0] == old]:
                del self._by_call[key]

    def calls_of(self, step: int, stage: str) -> list[Call]:
        """The calls of (step, stage), in completion order (``end``, then ``begin``, node, call)."""
        found = self._calls.get(step)
        if found is None:
            self._evict(self._calls, step)
            found = self._calls[step] = defaultdict(list)
            for row in self.call_rows.of(step).to_pylist():
                found[row["stage"]].append(Call(row["node"], row["call"], row["begin"], row["end"]))
            for calls in found.values():
                calls.sort(key=lambda c: (c.end, c.begin, c.node, c.call))
        return found.get(stage, [])

    def step_records(self, step: int) -> dict[tuple[str, int], list[Record]]:
        """The records of ``step`` by (stage, node), in table order."""
        found = self._records.get(step)
        if found is None:
            self._evict(self._records, step)
            found = self._records[step] = defaultdict(list)
            for row in self.tensor_rows.of(step).to_pylist():
                record = Record(
                    id=row["id"],
                    step=row["step"],
                    stage=row["stage"],
                    node=row["node"],
                    call=row["call"],
                    role=row["role"],
                    slot=row["slot"],
                    dtype=row["dtype"],
                    shape=tuple(row["shape"]) if row["shape"] is not None else None,
                    level=row["level"],
                    hash=row["hash"],
                    array=row["array"],
                    stats=_stats_of(row),
                    value=row["value"],
                )
                found[(record.stage, record.node)].append(record)
        return found

    def release(self, steps: list[int]) -> None:
        """Release the table pages of ``steps`` (:meth:`StepRows.release`)."""
        self.call_rows.release(steps)
        self.tensor_rows.release(steps)

    def active_nodes(self) -> set[int]:
        """Nodes with a call or a record in the selected steps."""
        found: set[int] = set()
        for rows in (self.call_rows, self.tensor_rows):
            for piece in rows.slices(*rows.span(self.steps)):
                found.update(pc.unique(piece.column("node")).to_pylist())
        return found

    def _check_acyclic(self, trace: Trace) -> None:
        """Untrusted tables: a parent chain that loops would make every tree walk hang."""
        depth: dict[int, int] = {}
        for start in self.nodes:
            chain: list[int] = []
            node: int | None = start
            while node is not None and node not in depth:
                if len(chain) > len(self.nodes):
                    raise TableInvalidError(
                        f"{trace.path}: rank_{self.rank} nodes table: the parents of node {start} form a cycle"
                    )
                chain.append(node)
                node = self.nodes[node].parent
            base = -1 if node is None else depth[node]
            for offset, member in enumerate(reversed(chain), start=1):
                depth[member] = base + offset
        self._depth = depth

    def roots(self) -> list[int]:
        return self.children.get(None, [])

    def depth(self, node: int) -> int:
        """0 for a root, 1 for its children..."""
        return self._depth[node]

    def ancestors(self, node: int) -> list[int]:
        """``node``'s ancestors, nearest first."""
        found = []
        parent = self.nodes[node].parent
        while parent is not None:
            found.append(parent)
            parent = self.nodes[parent].parent
        return found

    def op_site(self, node: int) -> OpSite | None:
        """Where an op node is called from; None for a module."""
        meta = self.nodes[node]
        if meta.kind != "op":
            return None
        parent = self.nodes.get(meta.parent) if meta.parent is not None else None
        return OpSite(parent.route if parent else "", meta.op, meta.source)

    def first_call_begin(self, node: int) -> int | None:
        """When ``node`` first ran forward in the first step (its place in execution order)."""
        return self._first_begin.get(node)

    def forward_call_count(self, node: int) -> int:
        """How many times ``node`` ran forward in the first step."""
        return self._call_count.get(node, 0)

    def call_records(self, step: int, stage: str, node: int, call: int | None) -> list[Record]:
        """The records of one call of ``node`` (``call`` None: those outside any call, parameters
        and their gradients), grouped once per (step, stage, node): a module called a thousand
        times is not scanned a thousand times."""
        key = (step, stage, node)
        by_call = self._by_call.get(key)
        if by_call is None:
            by_call = defaultdict(list)
            for record in self.step_records(step).get((stage, node), []):
                by_call[record.call].append(record)
            self._by_call[key] = by_call
        return by_call.get(call, [])

    def node_records(self, node: int) -> list[Record]:
        """The records of ``node`` in the first step, every stage (for alignment signatures)."""
        if not self.steps:
            return []
        records = self.step_records(self.steps[0])
        return [r for stage in STAGE_ORDER for r in records.get((stage, node), [])]
