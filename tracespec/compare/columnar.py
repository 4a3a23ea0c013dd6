"""Statistics and hashes compared column-wise: thousands of steps of a long run at once.

Constraints: numpy and pyarrow only, no framework import, no Python object per record; memory is
that of one batch of steps (:data:`BATCH_STEPS`) whatever the trace length; the results are the
per-record path's (:mod:`tracespec.compare.engine`), status for status, and a step that this module
cannot reproduce exactly is left to that path.

A training run repeats itself: every step makes the same calls and records the same tensors, only
the values change. The per-record path compares one step of each *structure* (its calls, with their
counters relative to the step's first, and each record's stage, node, call, role, slot, dtype,
shape and kept levels) and this module notes, for every record pair it judged, which rows of A and
B it read, under which tolerance and mode, and where each pair sits in the units (upstream or own
records). Every later step of the same structure is then judged as arrays of shape (steps, pairs):
the statistics test of ``compare_stats`` with the scale of section 6.3 of the verdict spec (own RMS,
the median of the step's peers, the scope of a cancelled gradient), hash equality, and the unit
statuses and diagnosis of ``classify_units`` as matrix products over the units' records.

Left to the per-record path: steps with stored data (``full`` records: elementwise metrics, kinks and
baselines read tensors), steps with a new structure (compared record by record once, then learned),
and records with both statistics and a hash (a tensor pair recorded twice is judged once, under the
first record's scale, which only the per-record path follows).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tracespec.compare.diagnose import DIVERGED, RecordResult, UnitResult
from tracespec.compare.noise import CANCELLED_BELOW, ROLE_GROUPS, SCOPED_GROUPS
from tracespec.compare.tolerance import TolerancePolicy
from tracespec.compare.view import STAGE_ORDER, RankView, Record

__all__ = ["BATCH_STEPS", "TEMPLATES", "ColumnarRank", "StepSummary", "summarize_units"]

BATCH_STEPS: Final = 256
"""Steps judged together: large enough that numpy's per-call cost vanishes, small enough that a
batch of 500-record steps takes a few tens of MB."""

TEMPLATES: Final = 8
"""Step structures kept per rank: a training repeats one or a few (the first step, the steady state)."""

_STATUSES: Final = ("pass", "pass_within_tolerance", DIVERGED, "skipped")
_PASS, _WITHIN, _DIVERGED, _SKIPPED = range(4)
_STATS_FIELDS: Final = ("mean", "std", "min", "max", "l2")
_TENSOR_COLUMNS: Final = (
    "step",
    "id",
    "stage",
    "node",
    "call",
    "role",
    "slot",
    "dtype",
    "shape",
    "nan_count",
    "inf_count",
    "hash",
    "array",
    "value",
    *_STATS_FIELDS,
)
_STRUCTURE: Final = ("node", "call", "ndim", "has_stats", "has_hash", "has_array")
_TEXTS: Final = ("stage", "role", "slot", "dtype")
"""What a tensor row must match, row by row, for a step to share a learned structure (and its
shape's extents)."""

# how a pair is judged, fixed by its structure (see _Comparer._metrics in engine.py)
_CONSTANT, _VALUE, _STATS, _HASH, _BITWISE_HASH = range(5)


@dataclass(slots=True)
class StepSummary:
    """What one step of one rank came to: unit counts, record counts, and where it first diverged."""

    units: dict[str, int]
    records: int
    only_a: int
    only_b: int
    diverged_records: int
    worst_ratio: float
    first: dict[str, Any] | None
    """The first unit of the step that introduced a divergence (in stage, then execution order;
    else the first diverged unit, ``kind`` inherited): ``stage``, ``route``, ``class_name``, ``call``."""
    dtypes: set[str] = field(default_factory=set)


def _unit_counts(statuses: Sequence[str], divergences: Sequence[str | None]) -> dict[str, int]:
    return {
        "units": len(statuses),
        "diverged": sum(1 for s in statuses if s == DIVERGED),
        "introduced": sum(1 for d in divergences if d == "introduced"),
        "inherited": sum(1 for d in divergences if d == "inherited"),
        "pass": sum(1 for s in statuses if s == "pass"),
        "pass_within_tolerance": sum(1 for s in statuses if s == "pass_within_tolerance"),
        "skipped": sum(1 for s in statuses if s == "skipped"),
    }


def record_ratio(result: RecordResult) -> float | None:
    """A judged pair's ratio to its tolerance for the per-step series (identical 0, a diverged pair
    without a ratio, content hashes or shapes, infinite); None where nothing was measured."""
    if result.metrics is None:
        return math.inf if result.status == DIVERGED else None
    if result.metrics.kind == "none":
        return None
    return result.badness


def _first_of(units: Sequence[UnitResult]) -> dict[str, Any] | None:
    """The first unit that introduced a divergence, else the first that diverged (``first_divergence``)."""
    culprit, kind = next((u for u in units if u.divergence == "introduced"), None), "introduced"
    if culprit is None:
        culprit, kind = next((u for u in units if u.status == DIVERGED), None), "inherited"
    if culprit is None:
        return None
    return {"stage": culprit.stage, "route": culprit.a_route, "class_name": culprit.a_class, "call": culprit.call, "kind": kind}


def summarize_units(
    stages: Sequence[Sequence[UnitResult]], records: int, only_a: int, only_b: int, dtypes: set[str]
) -> StepSummary:
    """The summary of a step compared record by record (its units, stage by stage)."""
    units = [u for group in stages for u in group]
    pairs = {id(r): r for u in units for r in (*u.upstream, *u.params, *u.outputs)}
    ratios = [x for x in map(record_ratio, pairs.values()) if x is not None]
    first = None
    for group in stages:
        first = _first_of(group)
        if first is not None:
            break
    return StepSummary(
        units=_unit_counts([u.status for u in units], [u.divergence for u in units]),
        records=records,
        only_a=only_a,
        only_b=only_b,
        diverged_records=sum(1 for r in pairs.values() if r.status == DIVERGED),
        worst_ratio=max(ratios, default=0.0),
        first=first,
        dtypes=dtypes,
    )


class _Text:
    """A string column of a batch as bytes: row ``i`` is ``data[offsets[i]:offsets[i + 1]]`` where
    ``valid[i]``. Comparing a step's bytes and offsets with a template's compares its strings
    without hashing or decoding one of them."""

    def __init__(self, column: pa.ChunkedArray) -> None:
        array = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
        _, offsets, data = array.buffers()
        self.offsets = np.frombuffer(offsets, np.int32)[array.offset : array.offset + len(array) + 1].astype(np.int64)
        self.data = np.frombuffer(data, np.uint8) if data is not None else np.zeros(0, np.uint8)
        self.valid = _valid(array)

    def step(self, start: int, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Offsets relative to the first row, bytes and validity of rows ``start`` to ``start + count``."""
        offsets = self.offsets[start : start + count + 1]
        return offsets - offsets[0], self.data[offsets[0] : offsets[-1]].copy(), self.valid[start : start + count].copy()

    def matches(self, index: np.ndarray, template: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
        """For each step (a row of ``index``, its rows), whether its strings are the template's."""
        offsets, data, valid = template
        first = self.offsets[index[:, 0]]
        same = ((_rows_of(self.offsets, index) - first[:, None]) == offsets[:-1]).all(axis=1)
        same &= self.offsets[index[:, -1] + 1] - first == offsets[-1]
        same &= (_rows_of(self.valid, index) == valid).all(axis=1)
        if len(data):
            if len(first) and np.all(np.diff(first) == len(data)) and first[0] + len(first) * len(data) <= len(self.data):
                text = self.data[first[0] : first[0] + len(first) * len(data)].reshape(len(first), len(data))
            else:
                text = self.data[np.minimum(first[:, None] + np.arange(len(data)), len(self.data) - 1)]  # clipped: failed above
            same &= (text == data).all(axis=1)
        matches: np.ndarray = same
        return matches


def _rows_of(column: np.ndarray, index: np.ndarray) -> np.ndarray:
    """``column[index]`` for (steps, rows) indices; a view where the steps' rows follow one another
    (a batch of steps of one structure, the common case), a copy otherwise."""
    if index.size and index[-1, -1] - index[0, 0] + 1 == index.size:
        rows: np.ndarray = column[index[0, 0] : index[0, 0] + index.size].reshape(index.shape)
        return rows
    gathered: np.ndarray = column[index]
    return gathered


_TextStep = tuple[np.ndarray, np.ndarray, np.ndarray]


@dataclass(frozen=True, slots=True)
class _Structure:
    """What one side's rows of a step are, row by row: integer columns, string columns, extents."""

    columns: dict[str, np.ndarray]
    texts: dict[str, _TextStep]
    extents: np.ndarray


class _Rows:
    """One side's tensor rows of a batch of steps, as numpy columns, and where each step's rows are."""

    def __init__(self, table: pa.Table) -> None:
        self.table = table = _few_chunks(table)
        found, starts, counts = _step_bounds(table.column("step").to_numpy())
        self.start = dict(zip(found.tolist(), starts.tolist()))
        self.count = dict(zip(found.tolist(), counts.tolist()))
        self.texts = {name: _Text(table.column(name)) for name in _TEXTS}
        self.cols: dict[str, np.ndarray] = {
            "node": table.column("node").to_numpy(),
            "call": table.column("call").fill_null(-1).to_numpy(),
            "ndim": pc.list_value_length(table.column("shape")).fill_null(-1).to_numpy(),
            "has_stats": _valid(table.column("nan_count")),
            "has_hash": _valid(table.column("hash")),
            "has_array": _valid(table.column("array")),
        }
        self.extents = pc.list_flatten(table.column("shape")).to_numpy()
        """Every row's shape, one after the other (``shape_start`` says where each row's begins)."""
        ndim = np.maximum(self.cols["ndim"], 0)
        self.shape_start = np.cumsum(ndim) - ndim
        self.stats = {name: np.asarray(table.column(name).to_numpy(), np.float64) for name in _STATS_FIELDS}
        """Statistics, null as NaN (``stats_null`` says which were null: a NaN statistic is not one)."""
        self.stats_null = {name: _null(table.column(name)) for name in _STATS_FIELDS}
        self.nan_count = table.column("nan_count").fill_null(0).to_numpy()
        self.inf_count = table.column("inf_count").fill_null(0).to_numpy()

    def rows(self, steps: np.ndarray, width: int) -> np.ndarray:
        """(len(steps), width) indices of the rows of each step."""
        starts = np.array([self.start[s] for s in steps.tolist()], np.int64)
        return starts[:, None] + np.arange(width)[None, :]

    def step_structure(self) -> _Structure:
        """The structure of the rows, all of one step (what a template keeps)."""
        n = len(self.table)
        return _Structure(
            {name: self.cols[name].copy() for name in _STRUCTURE},
            {name: text.step(0, n) for name, text in self.texts.items()},
            self.extents.copy(),
        )

    def matches(self, index: np.ndarray, structure: _Structure) -> np.ndarray:
        """For each step (a row of ``index``), whether its rows have ``structure``."""
        same = np.ones(len(index), bool)
        for name, expected in structure.columns.items():
            same &= (_rows_of(self.cols[name], index) == expected).all(axis=1)
        for name, text in structure.texts.items():
            same &= self.texts[name].matches(index, text)
        if len(structure.extents):
            first = self.shape_start[index[:, 0]]
            at = np.minimum(first[:, None] + np.arange(len(structure.extents)), len(self.extents) - 1)
            same &= (self.extents[at] == structure.extents).all(axis=1)  # (clipped: failed above)
        return same


_FEW_CHUNKS: Final = 16


def _few_chunks(table: pa.Table) -> pa.Table:
    """``table``, its chunks combined where there are many (a segment per step: every operation on a
    column would pay per chunk, more than one copy of the batch costs)."""
    chunks = max((column.num_chunks for column in table.columns), default=0)
    return table.combine_chunks() if chunks > _FEW_CHUNKS else table


def _valid(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return np.asarray(column.is_valid().to_numpy(zero_copy_only=False), bool)


def _null(column: pa.ChunkedArray) -> np.ndarray:
    if not column.null_count:
        return np.zeros(len(column), bool)
    return np.asarray(column.is_null().to_numpy(zero_copy_only=False), bool)


class _Calls:
    """A's calls of a batch of steps: where each step's are, and their structure (counters
    relative to the step's first ``begin``)."""

    def __init__(self, table: pa.Table) -> None:
        table = _few_chunks(table)
        found, starts, counts = _step_bounds(table.column("step").to_numpy())
        self.start = dict(zip(found.tolist(), starts.tolist()))
        self.count = dict(zip(found.tolist(), counts.tolist()))
        begin, end = table.column("begin").to_numpy(), table.column("end").to_numpy()
        base = np.repeat(np.minimum.reduceat(begin, starts) if len(starts) else begin[:0], counts)
        self.rows = np.stack(
            [
                table.column("node").to_numpy().astype(np.int64),
                table.column("call").to_numpy().astype(np.int64),
                begin - base,
                end - base,
            ],
            axis=1,
        )
        self.stage = _Text(table.column("stage"))

    def structure(self) -> tuple[np.ndarray, _TextStep]:
        """The structure of a table of one step."""
        return self.rows.copy(), self.stage.step(0, len(self.rows))

    def matches(self, steps: np.ndarray, structure: tuple[np.ndarray, _TextStep]) -> np.ndarray:
        """For each of ``steps`` (each with as many calls as ``structure``), whether they are its calls."""
        rows, stage = structure
        if not len(rows):
            return np.ones(len(steps), bool)
        index = np.array([self.start[s] for s in steps.tolist()], np.int64)[:, None] + np.arange(len(rows))[None, :]
        same: np.ndarray = (self.rows[index] == rows).all(axis=(1, 2)) & self.stage.matches(index, stage)
        return same


class _Members:
    """Which columns belong to each group (a unit's own or upstream records, the units inside a unit),
    for "any of the group" over (steps, columns) masks without a dense matrix."""

    def __init__(self, groups: list[list[int]]) -> None:
        self.groups = len(groups)
        self.filled = np.array([g for g, members in enumerate(groups) if members], np.int64)
        self.members = np.array([m for members in groups for m in members], np.int64)
        self.starts = np.cumsum([0] + [len(members) for members in groups if members])[:-1]

    def any(self, mask: np.ndarray) -> np.ndarray:
        """(steps, groups): whether any member of each group is set in ``mask`` (steps, columns)."""
        found = np.zeros((len(mask), self.groups), bool)
        if len(self.members):
            found[:, self.filled] = np.logical_or.reduceat(mask[:, self.members], self.starts, axis=1)
        return found


@dataclass(slots=True)
class _Template:
    """One learned step structure: the pairs it judged, the units over them, and what varies per step."""

    structure_a: _Structure
    structure_b: _Structure
    rows_a: int
    rows_b: int
    calls: tuple[np.ndarray, _TextStep]
    elements_a: np.ndarray
    row_a: np.ndarray
    row_b: np.ndarray
    method: np.ndarray
    constant: np.ndarray
    rtol: np.ndarray
    atol: np.ndarray
    atol_scaled: np.ndarray
    count: np.ndarray
    peer_group: np.ndarray
    peer_rows: list[np.ndarray]
    scope_incidence: np.ndarray
    scope_columns: np.ndarray
    scoped: np.ndarray
    own: _Members
    upstream: _Members
    inside: _Members
    unit_stage: np.ndarray
    units: list[dict[str, Any]]
    records: int
    only_a: int
    only_b: int
    dtypes: set[str]


class ColumnarRank:
    """Learns the step structures of one rank and judges the steps that repeat them, in batches."""

    def __init__(self, view_a: RankView, view_b: RankView, policy: TolerancePolicy) -> None:
        self.va, self.vb = view_a, view_b
        self.policy = policy
        self.templates: list[_Template] = []
        """The structures learned, the latest first (at most :data:`TEMPLATES`)."""

    # ------------------------------------------------------------------ learning
    def learn(
        self,
        step: int,
        stages: Sequence[Sequence[UnitResult]],
        notes: dict[int, tuple[Record, Record, str]],
        records: int,
        only_a: int,
        only_b: int,
        dtypes: set[str],
    ) -> None:
        """Note the structure of ``step``, just compared record by record: its ``stages`` (units per
        stage), and ``notes`` (for each judged pair, by ``id``: A's record, B's record, the route
        whose tolerance applied)."""
        rows_a = _Rows(self.va.tensor_rows.of(step).select(_TENSOR_COLUMNS))
        rows_b = _Rows(self.vb.tensor_rows.of(step).select(_TENSOR_COLUMNS))
        if rows_a.cols["has_array"].any() or rows_b.cols["has_array"].any():
            return  # data kept: elementwise metrics, kinks and baselines stay per record
        calls = _Calls(self.va.call_rows.of(step)).structure()
        offset_a = {rid: i for i, rid in enumerate(rows_a.table.column("id").to_pylist())}
        offset_b = {rid: i for i, rid in enumerate(rows_b.table.column("id").to_pylist())}
        units = [u for group in stages for u in group]
        pairs: dict[int, RecordResult] = {}
        for unit in units:
            for result in (*unit.upstream, *unit.params, *unit.outputs):
                pairs.setdefault(id(result), result)
        index = {key: i for i, key in enumerate(pairs)}
        n = len(pairs)
        row_a, row_b = np.full(n, -1, np.int64), np.full(n, -1, np.int64)
        method, constant = np.full(n, _CONSTANT, np.int64), np.full(n, _SKIPPED, np.int64)
        rtol, atol = np.zeros(n), np.zeros(n)
        atol_scaled = np.zeros(n, bool)
        count = np.ones(n)
        peer_group = np.full(n, -1, np.int64)
        scoped = np.zeros(n, bool)
        peers: dict[tuple[str, str], int] = {}
        owners: dict[tuple[str, str, int], int] = {}
        ancestors: list[list[int]] = [[] for _ in range(n)]
        for key, result in pairs.items():
            i = index[key]
            note = notes.get(key)
            if note is None:  # a record without a counterpart: said, never judged
                continue
            ra, rb, route = note
            row_a[i], row_b[i] = offset_a[ra.id], offset_b[rb.id]
            if ra.dtype is None and rb.dtype is None:
                method[i] = _VALUE
                continue
            if ra.dtype is None or rb.dtype is None or result.mismatch is not None:
                constant[i] = _STATUSES.index(result.status)
                continue
            both_stats, both_hash = ra.stats is not None and rb.stats is not None, ra.hash is not None and rb.hash is not None
            if both_stats and both_hash:
                return  # judged once per tensor pair under the first record's scale: per record only
            if self.policy.mode_for(route) == "bitwise":
                same_bytes = result.transform is None and ra.dtype == rb.dtype
                method[i] = _BITWISE_HASH if both_hash and same_bytes else _CONSTANT
                continue
            if not both_stats:
                method[i] = _HASH if both_hash else _CONSTANT
                continue
            method[i] = _STATS
            tolerance = self.policy.tolerance_for(route, ra.dtype, rb.dtype)
            rtol[i], atol[i], atol_scaled[i] = tolerance.rtol, tolerance.atol, tolerance.atol_scaled
            count[i] = ra.stats.count  # type: ignore[union-attr]
            group = ROLE_GROUPS[ra.role]
            peer_group[i] = peers.setdefault((ra.stage, group), len(peers))
            if group in SCOPED_GROUPS:
                scoped[i] = True
                ancestors[i] = [owners.setdefault((ra.stage, group, node), len(owners)) for node in self.va.ancestors(ra.node)]
        # every A row of the step enters its peers' median and its scopes' sums (paired or not)
        peer_members: dict[int, list[int]] = {g: [] for g in range(len(peers))}
        incidence = np.zeros((len(rows_a.table), len(owners) + 1))
        for row, (stage, node, role) in enumerate(zip(*(rows_a.table.column(c).to_pylist() for c in ("stage", "node", "role")))):
            group = ROLE_GROUPS[role]
            if (stage, group) in peers:
                peer_members[peers[(stage, group)]].append(row)
            if group in SCOPED_GROUPS:
                for owner in (node, *self.va.ancestors(node)):
                    column = owners.get((stage, group, owner))
                    if column is not None:
                        incidence[row, column] = 1.0
        depth = max((len(a) for a in ancestors), default=0)
        scope_columns = np.full((n, depth), len(owners), np.int64)  # the last column sums nothing
        for i, found in enumerate(ancestors):
            scope_columns[i, : len(found)] = found
        own = _Members([[index[id(r)] for r in (*unit.params, *unit.outputs)] for unit in units])
        upstream = _Members([[index[id(r)] for r in unit.upstream] for unit in units])
        inside = _Members(
            [
                [
                    v
                    for v in range(u)
                    if units[v].stage == unit.stage and unit.a_node in units[v].ancestors and unit.contains_time_of(units[v])
                ]
                for u, unit in enumerate(units)
            ]
        )
        del self.templates[TEMPLATES - 1 :]  # a run whose structure never repeats learns without end
        self.templates.insert(
            0,
            _Template(
                structure_a=rows_a.step_structure(),
                structure_b=rows_b.step_structure(),
                rows_a=len(rows_a.table),
                rows_b=len(rows_b.table),
                calls=calls,
                elements_a=np.array([math.prod(shape or ()) for shape in rows_a.table.column("shape").to_pylist()], np.float64),
                row_a=row_a,
                row_b=row_b,
                method=method,
                constant=constant,
                rtol=rtol,
                atol=atol,
                atol_scaled=atol_scaled,
                count=count,
                peer_group=peer_group,
                peer_rows=[np.array(peer_members[g], np.int64) for g in range(len(peers))],
                scope_incidence=incidence,
                scope_columns=scope_columns,
                scoped=scoped,
                own=own,
                upstream=upstream,
                inside=inside,
                unit_stage=np.array([STAGE_ORDER.index(u.stage) for u in units], np.int64),
                units=[{"stage": u.stage, "route": u.a_route, "class_name": u.a_class, "call": u.call} for u in units],
                records=records,
                only_a=only_a,
                only_b=only_b,
                dtypes=set(dtypes),
            ),
        )

    # ------------------------------------------------------------------ judging
    def compare(self, steps: list[int]) -> dict[int, StepSummary]:
        """Judge the ``steps`` (sorted) that repeat a learned structure; the others are not returned."""
        if not self.templates or not steps:
            return {}
        start, end = self.va.tensor_rows.span(steps)
        rows_a = _Rows(self.va.tensor_rows.table.slice(start, end - start).select(_TENSOR_COLUMNS))
        start, end = self.vb.tensor_rows.span(steps)
        rows_b = _Rows(self.vb.tensor_rows.table.slice(start, end - start).select(_TENSOR_COLUMNS))
        start, end = self.va.call_rows.span(steps)
        calls = _Calls(self.va.call_rows.table.slice(start, end - start))
        found: dict[int, StepSummary] = {}
        pending = np.array([s for s in steps if s in rows_a.start and s in rows_b.start], np.int64)
        for template in self.templates:
            if not len(pending):
                break
            na, nb, nc = template.rows_a, template.rows_b, len(template.calls[0])
            fits = np.array(
                [rows_a.count[s] == na and rows_b.count[s] == nb and calls.count.get(s, 0) == nc for s in pending.tolist()], bool
            )
            candidates = pending[fits]
            if not len(candidates):
                continue
            index_a, index_b = rows_a.rows(candidates, na), rows_b.rows(candidates, nb)
            same = (
                rows_a.matches(index_a, template.structure_a)
                & rows_b.matches(index_b, template.structure_b)
                & calls.matches(candidates, template.calls)
            )
            if same.any():
                chosen = candidates[same]
                for step, summary in zip(chosen.tolist(), self._judge(template, rows_a, rows_b, index_a[same], index_b[same])):
                    found[step] = summary
                pending = np.setdiff1d(pending, chosen)
        return found

    def _judge(self, t: _Template, rows_a: _Rows, rows_b: _Rows, index_a: np.ndarray, index_b: np.ndarray) -> list[StepSummary]:
        k = len(index_a)
        pa_rows = index_a[:, np.maximum(t.row_a, 0)]  # (k, pairs): rows of the batch
        pb_rows = index_b[:, np.maximum(t.row_b, 0)]
        status = np.broadcast_to(t.constant, (k, len(t.method))).copy()
        ratio = np.where(status == _DIVERGED, np.inf, np.nan)
        if (t.method == _VALUE).any():
            cols = np.flatnonzero(t.method == _VALUE)
            equal = _equal(rows_a.table.column("value"), rows_b.table.column("value"), pa_rows[:, cols], pb_rows[:, cols])
            status[:, cols] = np.where(equal, _PASS, _SKIPPED)
        hashed = np.isin(t.method, (_HASH, _BITWISE_HASH))
        if hashed.any():
            cols = np.flatnonzero(hashed)
            equal = _equal(rows_a.table.column("hash"), rows_b.table.column("hash"), pa_rows[:, cols], pb_rows[:, cols])
            status[:, cols] = np.where(equal, _PASS, _DIVERGED)
            ratio[:, cols] = np.where(equal, 0.0, np.inf)
        if (t.method == _STATS).any():
            cols = np.flatnonzero(t.method == _STATS)
            status[:, cols], ratio[:, cols] = self._stats(t, cols, rows_a, rows_b, index_a, pa_rows[:, cols], pb_rows[:, cols])
        return self._diagnose(t, status, ratio)

    def _scale(self, t: _Template, cols: np.ndarray, rows_a: _Rows, index_a: np.ndarray) -> np.ndarray:
        """Each stats pair's scale (``_Comparer._scale``): the largest of its own RMS, its peers'
        median RMS and, for a cancelled gradient, its scope's RMS; NaN where there is none."""
        l2 = rows_a.stats["l2"][index_a]
        finite = t.elements_a[None, :] - rows_a.nan_count[index_a] - rows_a.inf_count[index_a]
        valid = ~rows_a.stats_null["l2"][index_a] & (rows_a.cols["has_stats"][index_a] == 1)
        with np.errstate(divide="ignore", invalid="ignore"):
            rms = np.where(valid & (finite > 0), l2 / np.sqrt(np.maximum(finite, 1)), np.nan)
        pair_rows = t.row_a[cols]
        own = rms[:, pair_rows]
        # peers: the median of the positive RMS of the step's A records of the same stage and group
        peers = np.full((len(index_a), len(t.peer_rows)), np.nan)
        for g, members in enumerate(t.peer_rows):
            values = np.where(rms[:, members] > 0, rms[:, members], np.nan)
            values.sort(axis=1)  # NaN last
            n = (~np.isnan(values)).sum(axis=1)
            low = np.take_along_axis(values, np.maximum((n - 1) // 2, 0)[:, None], 1)[:, 0]
            high = np.take_along_axis(values, np.maximum(n // 2, 0)[:, None], 1)[:, 0]
            peers[:, g] = np.where(n > 0, (low + high) / 2, np.nan)
        typical = peers[:, t.peer_group[cols]]
        candidates = [own, typical]
        if t.scoped[cols].any():
            squares = l2 * l2
            usable = valid & (finite > 0) & np.isfinite(squares)
            totals = np.where(usable, squares, 0.0) @ t.scope_incidence
            counts = np.where(usable, finite, 0.0) @ t.scope_incidence
            with np.errstate(divide="ignore", invalid="ignore"):
                owner_rms = np.where(counts > 0, np.sqrt(totals / np.where(counts > 0, counts, 1.0)), np.nan)
            columns = t.scope_columns[cols]
            if columns.shape[1]:
                best = np.fmax.reduce(owner_rms[:, columns], axis=2)
                cancelled = t.scoped[cols][None, :] & ~np.isnan(own) & (own < CANCELLED_BELOW * best)
                candidates.append(np.where(cancelled, best, np.nan))
        noise: np.ndarray = np.fmax.reduce(np.stack(candidates), axis=0)
        return noise

    def _stats(
        self, t: _Template, cols: np.ndarray, rows_a: _Rows, rows_b: _Rows, index_a: np.ndarray, ra: np.ndarray, rb: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """``compare_stats`` and ``judge`` on (steps, pairs) arrays."""
        scale = self._scale(t, cols, rows_a, index_a)
        reference = np.where(np.isfinite(scale), scale, 1.0)
        atol = np.where(t.atol_scaled[cols], t.atol[cols] * np.maximum(reference, 1e-30), t.atol[cols])
        rtol = t.rtol[cols]
        ratio = np.zeros(ra.shape)
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            for name in _STATS_FIELDS:
                va, vb = rows_a.stats[name][ra], rows_b.stats[name][rb]
                bound = rtol * np.abs(va)
                bound += atol * np.sqrt(np.maximum(t.count[cols], 1)) if name == "l2" else atol
                part = np.abs(vb - va)
                part /= bound
                part[bound <= 0] = np.inf  # (and NaN bounds: compare_stats's "bound > 0" is false for them)
                part[np.isnan(bound)] = np.inf
                part[va == vb] = 0.0
                if rows_a.stats_null[name].any() or rows_b.stats_null[name].any():
                    null_a, null_b = rows_a.stats_null[name][ra], rows_b.stats_null[name][rb]
                    part[null_a & null_b] = 0.0
                    part[null_a != null_b] = np.inf
                np.fmax(ratio, part, out=ratio)  # NaN (a NaN statistic beside a finite one) is ignored, as max() does
        agree = (rows_a.nan_count[ra] == rows_b.nan_count[rb]) & (rows_a.inf_count[ra] == rows_b.inf_count[rb])
        status = np.where((ratio == 0) & agree, _PASS, np.where((ratio <= 1) & agree, _WITHIN, _DIVERGED))
        return status, ratio

    def _diagnose(self, t: _Template, status: np.ndarray, ratio: np.ndarray) -> list[StepSummary]:
        """Unit statuses, introduced/inherited/contains and the first divergence, per step."""
        diverged = status == _DIVERGED
        own_diverged = t.own.any(diverged)
        upstream_diverged = t.upstream.any(diverged)
        own_within = t.own.any(status == _WITHIN)
        own_compared = t.own.any(status != _SKIPPED)
        unit_status = np.where(own_diverged, _DIVERGED, np.where(~own_compared, _SKIPPED, np.where(own_within, _WITHIN, _PASS)))
        candidate = own_diverged & ~upstream_diverged
        contains = candidate & t.inside.any(candidate)
        introduced = candidate & ~contains
        inherited = own_diverged & upstream_diverged
        worst = np.fmax.reduce(np.where(np.isnan(ratio), -1.0, ratio), axis=1, initial=-1.0)
        counts = {
            "units": np.full(len(status), len(t.units)),
            "diverged": (unit_status == _DIVERGED).sum(axis=1),
            "introduced": introduced.sum(axis=1),
            "inherited": inherited.sum(axis=1),
            "pass": (unit_status == _PASS).sum(axis=1),
            "pass_within_tolerance": (unit_status == _WITHIN).sum(axis=1),
            "skipped": (unit_status == _SKIPPED).sum(axis=1),
        }
        rows = [dict(zip(counts, values)) for values in zip(*(c.tolist() for c in counts.values()))]
        diverged_records = diverged.sum(axis=1).astype(np.int64).tolist()
        # the first divergence of each step: stage by stage, the first introducing unit, else the first diverged
        firsts: list[dict[str, Any] | None] = [None] * len(status)
        for stage in range(len(STAGE_ORDER)):
            in_stage = t.unit_stage == stage
            for mask, kind in ((introduced & in_stage, "introduced"), (own_diverged & in_stage, "inherited")):
                hit = mask.any(axis=1)
                where = mask.argmax(axis=1)
                for s in np.flatnonzero(hit).tolist():
                    if firsts[s] is None:
                        firsts[s] = {**t.units[int(where[s])], "kind": kind}
        return [
            StepSummary(
                units=units,
                records=t.records,
                only_a=t.only_a,
                only_b=t.only_b,
                diverged_records=diverged_records[s],
                worst_ratio=max(float(worst[s]), 0.0),
                first=firsts[s],
                dtypes=t.dtypes,
            )
            for s, units in enumerate(rows)
        ]


def _step_bounds(steps: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The steps of a column sorted by step, where each one's rows start, and how many it has."""
    starts = np.flatnonzero(np.diff(steps, prepend=steps[:1] - 1)) if len(steps) else np.zeros(0, np.int64)
    return steps[starts], starts, np.diff(np.append(starts, len(steps)))


def _equal(column_a: pa.ChunkedArray, column_b: pa.ChunkedArray, rows_a: np.ndarray, rows_b: np.ndarray) -> np.ndarray:
    """Element-wise equality of two string columns at the given rows (two nulls are equal)."""
    a = column_a.take(pa.array(rows_a.reshape(-1)))
    b = column_b.take(pa.array(rows_b.reshape(-1)))
    same = pc.fill_null(pc.equal(a, b), False)
    both_null = pc.and_(a.is_null(), b.is_null())
    return np.asarray(pc.or_(same, both_null).to_numpy(zero_copy_only=False), bool).reshape(rows_a.shape)
