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

__all__ = ["BATCH_STEPS", "ColumnarRank", "StepSummary", "summarize_units"]

BATCH_STEPS: Final = 256
"""Steps judged together: large enough that numpy's per-call cost vanishes, small enough that a
batch of 500-record steps takes a few tens of MB."""

_STATUSES: Final = ("pass", "pass_within_tolerance", DIVERGED, "skipped")
_PASS, _WITHIN, _DIVERGED, _SKIPPED = range(4)
_STATS_FIELDS: Final = ("mean", "std", "min", "max", "l2")
_TENSOR_COLUMNS: Final = ("step", "id", "stage", "node", "call", "role", "slot", "dtype", "shape", "nan_count",
                          "inf_count", "hash", "array", "value", *_STATS_FIELDS)
_STRUCTURE: Final = ("stage", "node", "call", "role", "slot", "dtype", "ndim", "has_stats", "has_hash", "has_array")
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
    for wanted in ("introduced", None):
        for unit in units:
            if (unit.divergence == wanted) if wanted else unit.status == DIVERGED:
                return {"stage": unit.stage, "route": unit.a_route, "class_name": unit.a_class, "call": unit.call,
                        "kind": "introduced" if wanted else "inherited"}
    return None


def summarize_units(stages: Sequence[Sequence[UnitResult]], records: int, only_a: int, only_b: int,
                    dtypes: set[str]) -> StepSummary:
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
        records=records, only_a=only_a, only_b=only_b,
        diverged_records=sum(1 for r in pairs.values() if r.status == DIVERGED),
        worst_ratio=max(ratios, default=0.0), first=first, dtypes=dtypes,
    )


class _Codes:
    """Global integer codes for the strings of a column (the same string, the same code in every batch)."""

    def __init__(self) -> None:
        self.codes: dict[Any, int] = {}
        self.values: list[Any] = []
        """The string of each code."""

    def _code(self, value: Any) -> int:
        code = self.codes.get(value)
        if code is None:
            code = self.codes[value] = len(self.values)
            self.values.append(value)
        return code

    def encode(self, column: pa.ChunkedArray | pa.Array) -> np.ndarray:
        encoded = pc.dictionary_encode(column)
        chunks = encoded.chunks if isinstance(encoded, pa.ChunkedArray) else [encoded]
        parts = []
        for chunk in chunks:
            lut = np.array([self._code(v) for v in chunk.dictionary.to_pylist()] + [-1], np.int64)
            indices = chunk.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
            parts.append(lut[indices])
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)


class _Rows:
    """One side's tensor rows of a batch of steps, as numpy columns, and where each step's rows are."""

    def __init__(self, table: pa.Table, codes: dict[str, _Codes]) -> None:
        self.table = table
        found, starts, counts = _step_bounds(table.column("step").to_numpy())
        self.start = dict(zip(found.tolist(), starts.tolist()))
        self.count = dict(zip(found.tolist(), counts.tolist()))
        self.cols: dict[str, np.ndarray] = {
            "stage": codes["stage"].encode(table.column("stage")),
            "node": table.column("node").to_numpy().astype(np.int64),
            "call": table.column("call").fill_null(-1).to_numpy().astype(np.int64),
            "role": codes["role"].encode(table.column("role")),
            "slot": codes["slot"].encode(table.column("slot")),
            "dtype": codes["dtype"].encode(table.column("dtype")),
            "ndim": pc.list_value_length(table.column("shape")).fill_null(-1).to_numpy().astype(np.int64),
            "has_stats": _valid(table.column("nan_count")),
            "has_hash": _valid(table.column("hash")),
            "has_array": _valid(table.column("array")),
        }
        self.extents = pc.list_flatten(table.column("shape")).to_numpy()
        """Every row's shape, one after the other (``shape_start`` says where each row's begins)."""
        self.shape_start = np.cumsum(np.maximum(self.cols["ndim"], 0)) - np.maximum(self.cols["ndim"], 0)
        self.stats = {name: table.column(name).to_numpy(zero_copy_only=False).astype(np.float64)
                      for name in _STATS_FIELDS}  # null -> NaN; nulls kept apart below
        self.stats_null = {name: table.column(name).is_null().to_numpy(zero_copy_only=False) for name in _STATS_FIELDS}
        self.nan_count = table.column("nan_count").fill_null(0).to_numpy().astype(np.float64)
        self.inf_count = table.column("inf_count").fill_null(0).to_numpy().astype(np.float64)

    def rows(self, steps: np.ndarray, width: int) -> np.ndarray:
        """(len(steps), width) indices of the rows of each step."""
        starts = np.array([self.start[s] for s in steps.tolist()], np.int64)
        return starts[:, None] + np.arange(width)[None, :]

    def step_structure(self) -> _Structure:
        """The structure of the rows, all of one step (what a template keeps)."""
        return _Structure({name: self.cols[name].copy() for name in _STRUCTURE}, self.extents.copy())

    def matches(self, index: np.ndarray, structure: _Structure) -> np.ndarray:
        """For each step (a row of ``index``), whether its rows have ``structure``."""
        same = np.ones(len(index), bool)
        for name, expected in structure.columns.items():
            same &= (self.cols[name][index] == expected).all(axis=1)
        if len(structure.extents):
            first = self.shape_start[index[:, 0]]
            at = np.minimum(first[:, None] + np.arange(len(structure.extents)), len(self.extents) - 1)
            same &= (self.extents[at] == structure.extents).all(axis=1)  # (clipped: a step that runs past the
            # end has other ndims, and fails above)
        return same


@dataclass(frozen=True, slots=True)
class _Structure:
    columns: dict[str, np.ndarray]
    extents: np.ndarray


def _valid(column: pa.ChunkedArray) -> np.ndarray:
    return np.asarray(column.is_valid().to_numpy(zero_copy_only=False), bool)


def _call_structure(table: pa.Table, codes: _Codes) -> tuple[dict[int, int], dict[int, int], np.ndarray]:
    """A's calls of a batch: (start and count per step, rows of stage, node, call, begin and end
    relative to the step's first begin)."""
    found, starts, counts = _step_bounds(table.column("step").to_numpy())
    begin = table.column("begin").to_numpy().astype(np.int64)
    end = table.column("end").to_numpy().astype(np.int64)
    base = np.repeat(np.minimum.reduceat(begin, starts) if len(starts) else begin[:0], counts)
    rows = np.stack([codes.encode(table.column("stage")), table.column("node").to_numpy().astype(np.int64),
                     table.column("call").to_numpy().astype(np.int64), begin - base, end - base], axis=1)
    return dict(zip(found.tolist(), starts.tolist())), dict(zip(found.tolist(), counts.tolist())), rows


@dataclass(slots=True)
class _Template:
    """One learned step structure: the pairs it judged, the units over them, and what varies per step."""

    structure_a: _Structure
    structure_b: _Structure
    rows_a: int
    rows_b: int
    calls: np.ndarray
    elements_a: np.ndarray
    row_a: np.ndarray
    row_b: np.ndarray
    method: np.ndarray
    constant: np.ndarray
    rtol: np.ndarray
    atol: np.ndarray
    atol_scaled: np.ndarray
    same_bytes: np.ndarray
    count: np.ndarray
    peer_group: np.ndarray
    peer_rows: list[np.ndarray]
    scope_incidence: np.ndarray
    scope_columns: np.ndarray
    scoped: np.ndarray
    own: np.ndarray
    upstream: np.ndarray
    inside: np.ndarray
    unit_stage: np.ndarray
    units: list[dict[str, Any]]
    records: int
    only_a: int
    only_b: int
    dtypes: set[str]


class ColumnarRank:
    """Learns the step structures of one rank and judges the steps that repeat them, in batches."""

    def __init__(self, view_a: RankView, view_b: RankView, policy: TolerancePolicy, trust_hashes: bool) -> None:
        self.va, self.vb = view_a, view_b
        self.policy = policy
        self.trust_hashes = trust_hashes
        self.codes = {name: _Codes() for name in ("stage", "role", "slot", "dtype", "shape")}
        self.templates: list[_Template] = []

    # ------------------------------------------------------------------ learning
    def learn(self, step: int, stages: Sequence[Sequence[UnitResult]], notes: dict[int, tuple[Record, Record, str]],
              records: int, only_a: int, only_b: int, dtypes: set[str]) -> None:
        """Note the structure of ``step``, just compared record by record: its ``stages`` (units per
        stage), and ``notes`` (for each judged pair, by ``id``: A's record, B's record, the route
        whose tolerance applied)."""
        rows_a = _Rows(self.va.tensor_rows.of(step).select(_TENSOR_COLUMNS), self.codes)
        rows_b = _Rows(self.vb.tensor_rows.of(step).select(_TENSOR_COLUMNS), self.codes)
        if rows_a.cols["has_array"].any() or rows_b.cols["has_array"].any():
            return  # data kept: elementwise metrics, kinks and baselines stay per record
        _, _, calls = _call_structure(self.va.call_rows.of(step), self.codes["stage"])
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
        atol_scaled, same_bytes = np.zeros(n, bool), np.zeros(n, bool)
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
            same_bytes[i] = result.transform is None and ra.dtype == rb.dtype
            mode = self.policy.mode_for(route)
            if mode == "bitwise":
                method[i] = _BITWISE_HASH if both_hash and same_bytes[i] else _CONSTANT
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
                ancestors[i] = [owners.setdefault((ra.stage, group, node), len(owners))
                                for node in self.va.ancestors(ra.node)]
        # every A row of the step enters its peers' median and its scopes' sums (paired or not)
        stage_names = {code: name for name, code in self.codes["stage"].codes.items()}
        role_names = {code: name for name, code in self.codes["role"].codes.items()}
        peer_members: dict[int, list[int]] = {g: [] for g in range(len(peers))}
        incidence = np.zeros((len(rows_a.table), len(owners) + 1))
        for row, (stage_code, node, role_code) in enumerate(zip(rows_a.cols["stage"].tolist(), rows_a.cols["node"].tolist(),
                                                                rows_a.cols["role"].tolist())):
            stage, group = stage_names[stage_code], ROLE_GROUPS[role_names[role_code]]
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
        own, upstream = np.zeros((n, len(units)), np.float32), np.zeros((n, len(units)), np.float32)
        for u, unit in enumerate(units):
            for result in (*unit.params, *unit.outputs):
                own[index[id(result)], u] = 1.0
            for result in unit.upstream:
                upstream[index[id(result)], u] = 1.0
        inside = np.zeros((len(units), len(units)), np.float32)
        for u, unit in enumerate(units):
            for v in range(u):
                other = units[v]
                if other.stage == unit.stage and unit.a_node in other.ancestors and unit.contains_time_of(other):
                    inside[v, u] = 1.0
        self.templates.append(_Template(
            structure_a=rows_a.step_structure(), structure_b=rows_b.step_structure(),
            rows_a=len(rows_a.table), rows_b=len(rows_b.table), calls=calls,
            elements_a=np.array([math.prod(shape or ()) for shape in rows_a.table.column("shape").to_pylist()], np.float64),
            row_a=row_a, row_b=row_b, method=method, constant=constant, rtol=rtol, atol=atol,
            atol_scaled=atol_scaled, same_bytes=same_bytes, count=count, peer_group=peer_group,
            peer_rows=[np.array(peer_members[g], np.int64) for g in range(len(peers))],
            scope_incidence=incidence, scope_columns=scope_columns, scoped=scoped,
            own=own, upstream=upstream, inside=inside,
            unit_stage=np.array([STAGE_ORDER.index(u.stage) for u in units], np.int64),
            units=[{"stage": u.stage, "route": u.a_route, "class_name": u.a_class, "call": u.call} for u in units],
            records=records, only_a=only_a, only_b=only_b, dtypes=set(dtypes),
        ))

    # ------------------------------------------------------------------ judging
    def compare(self, steps: list[int]) -> dict[int, StepSummary]:
        """Judge the ``steps`` (sorted) that repeat a learned structure; the others are not returned."""
        if not self.templates or not steps:
            return {}
        start, end = self.va.tensor_rows.span(steps)
        rows_a = _Rows(self.va.tensor_rows.table.slice(start, end - start).select(_TENSOR_COLUMNS), self.codes)
        start, end = self.vb.tensor_rows.span(steps)
        rows_b = _Rows(self.vb.tensor_rows.table.slice(start, end - start).select(_TENSOR_COLUMNS), self.codes)
        start, end = self.va.call_rows.span(steps)
        call_start, call_count, calls = _call_structure(self.va.call_rows.table.slice(start, end - start),
                                                        self.codes["stage"])
        found: dict[int, StepSummary] = {}
        pending = np.array([s for s in steps if s in rows_a.start and s in rows_b.start], np.int64)
        for template in self.templates:
            if not len(pending):
                break
            na, nb, nc = template.rows_a, template.rows_b, len(template.calls)
            fits = np.array([rows_a.count[s] == na and rows_b.count[s] == nb and call_count.get(s, 0) == nc
                             for s in pending.tolist()], bool)
            candidates = pending[fits]
            if not len(candidates):
                continue
            index_a, index_b = rows_a.rows(candidates, na), rows_b.rows(candidates, nb)
            call_index = np.array([call_start[s] for s in candidates.tolist()], np.int64)[:, None] + np.arange(nc)[None, :]
            same = (rows_a.matches(index_a, template.structure_a) & rows_b.matches(index_b, template.structure_b)
                    & (calls[call_index] == template.calls).all(axis=(1, 2)))
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
        return np.fmax.reduce(np.stack(candidates), axis=0)

    def _stats(self, t: _Template, cols: np.ndarray, rows_a: _Rows, rows_b: _Rows, index_a: np.ndarray,
               ra: np.ndarray, rb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``compare_stats`` and ``judge`` on (steps, pairs) arrays."""
        scale = self._scale(t, cols, rows_a, index_a)
        reference = np.where(np.isfinite(scale), scale, 1.0)
        atol = np.where(t.atol_scaled[cols], t.atol[cols] * np.maximum(reference, 1e-30), t.atol[cols])
        rtol = t.rtol[cols]
        ratio = np.zeros(ra.shape)
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            for name in _STATS_FIELDS:
                va, vb = rows_a.stats[name][ra], rows_b.stats[name][rb]
                null_a, null_b = rows_a.stats_null[name][ra], rows_b.stats_null[name][rb]
                if name == "l2":
                    bound = atol * np.sqrt(np.maximum(t.count[cols], 1)) + rtol * np.abs(va)
                else:
                    bound = atol + rtol * np.abs(va)
                part = np.where(bound > 0, np.abs(vb - va) / bound, np.inf)
                part = np.where((va != vb) & ~null_a & ~null_b, part, 0.0)
                part = np.where(null_a != null_b, np.inf, part)
                ratio = np.fmax(ratio, part)  # NaN (a NaN statistic beside a finite one) is ignored, as max() does
        agree = (rows_a.nan_count[ra] == rows_b.nan_count[rb]) & (rows_a.inf_count[ra] == rows_b.inf_count[rb])
        status = np.where((ratio == 0) & agree, _PASS, np.where((ratio <= 1) & agree, _WITHIN, _DIVERGED))
        return status, ratio

    def _diagnose(self, t: _Template, status: np.ndarray, ratio: np.ndarray) -> list[StepSummary]:
        """Unit statuses, introduced/inherited/contains and the first divergence, per step."""
        diverged = (status == _DIVERGED).astype(np.float32)
        own_diverged = diverged @ t.own > 0
        upstream_diverged = diverged @ t.upstream > 0
        own_within = (status == _WITHIN).astype(np.float32) @ t.own > 0
        own_compared = (status != _SKIPPED).astype(np.float32) @ t.own > 0
        unit_status = np.where(own_diverged, _DIVERGED, np.where(~own_compared, _SKIPPED,
                                                                 np.where(own_within, _WITHIN, _PASS)))
        candidate = own_diverged & ~upstream_diverged
        contains = candidate & (candidate.astype(np.float32) @ t.inside > 0)
        introduced = candidate & ~contains
        inherited = own_diverged & upstream_diverged
        worst = np.fmax.reduce(np.where(np.isnan(ratio), -1.0, ratio), axis=1, initial=-1.0)
        counts = {
            "units": np.full(len(status), len(t.units)), "diverged": (unit_status == _DIVERGED).sum(axis=1),
            "introduced": introduced.sum(axis=1), "inherited": inherited.sum(axis=1),
            "pass": (unit_status == _PASS).sum(axis=1), "pass_within_tolerance": (unit_status == _WITHIN).sum(axis=1),
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
            StepSummary(units=units, records=t.records, only_a=t.only_a, only_b=t.only_b,
                        diverged_records=diverged_records[s], worst_ratio=max(float(worst[s]), 0.0),
                        first=firsts[s], dtypes=t.dtypes)
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
