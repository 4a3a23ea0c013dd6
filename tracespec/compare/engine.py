"""Compare two traces: align, pair records, measure, diagnose, and build a :class:`Verdict`.

Constraints: no framework import; memory bounded by a few tensors (each tensor pair is read, compared
block by block and released before the next; results of an array pair already compared are reused,
so a module input that is the previous module's output is read once); deterministic output.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import math
import os
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tracespec.compare.align import Alignment, align_trees
from tracespec.compare.baseline import BASELINE_FACTOR, Baseline, open_baseline
from tracespec.compare.calls import CallMatch, alignment_layer_map
from tracespec.compare.columnar import BATCH_STEPS, ColumnarRank, StepSummary, summarize_units
from tracespec.compare.diagnose import (
    RecordResult,
    UnitResult,
    classify_units,
    error_growth,
    first_divergence,
    next_step_hint,
)
from tracespec.compare.kinks import BenignExplainer, benign_differences
from tracespec.compare.layer_map import LayerMap, Transform, load_layer_map, transform_for
from tracespec.compare.metrics import (
    BLOCK,
    Metrics,
    RangeSums,
    compare_arrays,
    compare_hashes,
    compare_stats,
    fold_ranges,
    identical_arrays,
    judge,
    measure_range,
)
from tracespec.compare.noise import ROLE_GROUPS, ScopeScales, record_rms
from tracespec.compare.tolerance import MODES, Tolerance, TolerancePolicy
from tracespec.compare.verdict import VERDICT_VERSION, Verdict
from tracespec.compare.view import STAGE_ORDER, RankView, Record
from tracespec.errors import TableMismatchError, UsageError
from tracespec.format.dtypes import dtype_of, numpy_dtype
from tracespec.format.tables import ROLES, STAGES
from tracespec.storage import ArrayMeta, Trace, current_location_defaults, load_trace, location_defaults

__all__ = [
    "SPLIT_BYTES",
    "PairRanges",
    "Progress",
    "RankOutcome",
    "RankPlan",
    "RankTask",
    "compare_rank",
    "compare_ranks_apart",
    "compare_traces",
    "measure_pair_range",
    "split_tasks",
]

Progress = Callable[[int, int], None]
"""Called with (bytes compared so far, bytes to compare in all)."""

_FORWARD_PARAMS = ("parameter", "buffer")

Judgment = tuple[Metrics, str, dict[str, Any]]
"""A tensor pair's metrics, status and noise: what every record of the pair shares."""

SPLIT_BYTES: Final = 256 << 20
"""On a Dask cluster, a tensor pair whose two tensors hold this many bytes or more is measured in
pieces of a quarter of it, by several workers at once (``compare_traces(split_bytes=)``)."""

PairRanges = Callable[[Record, Record, Tolerance, float | None, list[tuple[int, int, bool]]], list[RangeSums]]
"""Measures element ranges of A's and B's record elsewhere (a Dask task's sub-tasks,
:func:`measure_pair_range`) under a tolerance and scale: each range given as (start, stop, sums
wanted even where its bytes agree), their sums returned in the same order."""

DETAIL_STEPS: Final = 10
"""Up to this many steps compared, the verdict lists the units of every step; beyond, of the first
step and of the first divergent step (the per-step series ``steps`` covers them all)."""


@dataclass(frozen=True, slots=True)
class _Selection:
    steps: list[int]
    ranks: list[int]
    stages: tuple[str, ...]
    routes: tuple[str, ...]
    exclude: tuple[str, ...]

    def wants(self, route: str) -> bool:
        if self.routes and not any(fnmatch.fnmatchcase(route, p) for p in self.routes):
            return False
        return not any(fnmatch.fnmatchcase(route, p) for p in self.exclude)


def _open(trace: Trace | str | os.PathLike[str]) -> Trace:
    return trace if isinstance(trace, Trace) else load_trace(trace)


StepRange = tuple["int | None", "int | None"]
"""Steps ``first`` to ``last``, both included; ``None`` leaves that end open (``--step 200:300``)."""


def _select(values: Iterable[int | StepRange] | None, a: list[int], b: list[int], what: str) -> list[int]:
    """The values chosen (every one in both traces), and the values of both traces within each range."""
    common = sorted(set(a) & set(b))
    if values is None:
        return common
    values = list(values)
    chosen = {v for v in values if isinstance(v, int)}
    missing = sorted(v for v in chosen if v not in common)
    if missing:
        raise UsageError(f"{what} {missing} not in both traces (A has {spans(a)}, B has {spans(b)})")
    for value in values:
        if isinstance(value, tuple):
            first, last = value
            inside = [v for v in common if (first is None or v >= first) and (last is None or v <= last)]
            if not inside:
                shown = f"{'' if first is None else first}:{'' if last is None else last}"
                raise UsageError(f"{what} {shown} holds no step of both traces (A has {spans(a)}, B has {spans(b)})")
            chosen.update(inside)
    return sorted(chosen)


def spans(values: list[int]) -> str:
    """``[0, 1, 2, 5, 7, 8]`` as ``0-2, 5, 7-8`` (a long run's steps in a message)."""
    found: list[str] = []
    for value in sorted(values):
        if found and found[-1].rpartition("-")[2].isdigit() and int(found[-1].rpartition("-")[2]) == value - 1:
            found[-1] = f"{found[-1].partition('-')[0]}-{value}"
        else:
            found.append(str(value))
    return ", ".join(found) if found else "none"


class _Comparer:
    """Compares record pairs of one rank, remembering the array pairs already judged."""

    def __init__(
        self,
        trace_a: Trace,
        trace_b: Trace,
        rank: int,
        policy: TolerancePolicy,
        trust_hashes: bool,
        progress: Callable[[int], None],
        scopes: ScopeScales,
        baseline: Baseline | None,
        ranges: PairRanges | None = None,
        split_bytes: int = SPLIT_BYTES,
    ) -> None:
        self.ta, self.tb, self.rank = trace_a, trace_b, rank
        self.policy = policy
        self.scopes = scopes
        self.baseline = baseline
        self.benign = BenignExplainer(self.read_pair, policy)
        self.trust_hashes = trust_hashes
        self.progress = progress
        self.ranges = ranges
        """Where large pairs are measured in pieces (by other workers); None: every pair here."""
        self.split_bytes = split_bytes
        self.judged: dict[tuple[Any, ...], tuple[Metrics, str, dict[str, Any], list[RecordResult]]] = {}
        self.seeded: set[tuple[Any, ...]] = set()
        """Keys of :meth:`seed`: judged before the steps this comparer walks (by another task)."""
        self.dtypes: set[str] = set()
        self.notes: dict[int, tuple[Record, Record, str]] | None = None
        """While set, each pair judged, by ``id`` of its result: A's and B's records and the route
        whose tolerance applied (what :meth:`ColumnarRank.learn` learns a step's structure from)."""

    def compare(self, route: str, ra: Record, rb: Record, transforms: dict[str, Any], typical_rms: float | None) -> RecordResult:
        transform = transform_for(transforms, ra)
        result = RecordResult(
            role=ra.role,
            slot=ra.slot,
            call=ra.call,
            status="skipped",
            dtype_a=ra.dtype,
            dtype_b=rb.dtype,
            shape_a=list(ra.shape) if ra.shape is not None else None,
            shape_b=list(rb.shape) if rb.shape is not None else None,
            transform=transform.describe() if transform is not None else None,
        )
        if self.notes is not None:
            self.notes[id(result)] = (ra, rb, route)
        if ra.dtype is None or rb.dtype is None:
            if ra.dtype is None and rb.dtype is None:
                result.status = "pass" if ra.value == rb.value else "skipped"
                if ra.value != rb.value:
                    result.note = f"non-tensor values differ: A {ra.value} vs B {rb.value} (not counted)"
            else:
                tensor_side, value_side, value = ("A", "B", rb.value) if ra.dtype is not None else ("B", "A", ra.value)
                result.note = f"a tensor in {tensor_side}, a non-tensor value in {value_side} ({value})"
            return result
        self.dtypes.update((ra.dtype, rb.dtype))
        shape_b = rb.shape if transform is None or rb.shape is None else transform.apply_shape(rb.shape)
        if ra.shape is not None and shape_b is not None and ra.shape != shape_b and _squeezed(ra.shape) == _squeezed(shape_b):
            # the same values with axes of size 1 kept or dropped (a pooling's [n, c, 1, 1] against a
            # flattened [n, c]): compared in A's shape
            transform = Transform((transform.ops if transform is not None else ()) + (("reshape", ra.shape),))
            shape_b, result.transform = ra.shape, transform.describe()
        if ra.shape != shape_b:
            result.status = "diverged"
            result.note = f"shapes differ: A {list(ra.shape or [])} vs B {list(rb.shape or [])}" + (
                f" ({result.transform} applied to B)" if transform else ""
            )
            result.mismatch = {
                "kind": "shape",
                "shape": {"a": result.shape_a, "b": result.shape_b},
                "dtype": {"a": ra.dtype, "b": rb.dtype},
            }
            return result
        # A tensor shared by several records (a module's output is the next one's input) is
        # judged once, under the tolerance of the first node in execution order that records it,
        # so that producer and consumer never disagree about it.
        key = _content_key(ra, rb, result.transform)
        judged = self.judged.get(key) if key is not None else None
        if judged is None:
            mode = self.policy.mode_for(route)
            tolerance = self.policy.tolerance_for(route, ra.dtype, rb.dtype)
            scale, noise = self._scale(ra, typical_rms)
            if self.baseline is not None and ra.array is not None and mode in ("norm", "strict", "mean"):
                tolerance, measured = self.baseline.widen(ra, _read_checked(self.ta, self.rank, ra, "A"), tolerance, scale, mode)
                if measured is not None:
                    noise["baseline"] = measured
            metrics = self._metrics(ra, rb, transform, mode, tolerance, scale)
            judged = (metrics, "skipped" if metrics.kind == "none" else judge(metrics, mode, tolerance), noise, [])
            if key is not None:
                self.judged[key] = judged
        result.metrics, result.status, result.noise, result.shared = judged
        result.shared.append(result)
        result.sources = (ra, rb, transform)
        if result.metrics.kind == "none":
            result.note = result.metrics.note
        return result

    def seed(self, judgments: Mapping[tuple[Any, ...], Judgment]) -> None:
        """Take the judgments of tensor pairs first judged in earlier steps, as if this comparer had
        walked them (a task that compares a rank's later steps, :func:`compare_rank`)."""
        for key, (metrics, status, noise) in judgments.items():
            self.judged[key] = (metrics, status, noise, [])
        self.seeded.update(judgments)

    def own_judgments(self) -> dict[tuple[Any, ...], Judgment]:
        """The judgments of tensor pairs by content hash made here (not seeded), in the order made:
        the only ones a later step can reuse (a stored array belongs to its step)."""
        return {key: found[:3] for key, found in self.judged.items() if key[0] == "hash" and key not in self.seeded}

    def rejudged(self) -> set[tuple[Any, ...]]:
        """Keys of the tensor pairs by content hash whose results an explanation changed after their
        judgment (kinks: :mod:`tracespec.compare.kinks`), which changes every result of the pair."""
        return {
            key
            for key, (_, status, noise, shared) in self.judged.items()
            if key[0] == "hash" and any(r.status != status or r.noise is not noise for r in shared)
        }

    def _scale(self, ra: Record, typical_rms: float | None) -> tuple[float | None, dict[str, Any]]:
        """The scale of A's tensor (docs/diff.md, Tolerances) and where it came from: the tensor's
        own RMS, its peers' median, or (gradients) the RMS of an enclosing scope's gradients."""
        candidates: list[tuple[float, dict[str, Any]]] = []
        own = record_rms(ra)
        if own is not None:
            candidates.append((own, {"scale_from": "tensor"}))
        if typical_rms is not None:
            candidates.append((typical_rms, {"scale_from": "peers"}))
        scope = self.scopes.scope(ra)
        if scope is not None:
            candidates.append((scope[0], {"scale_from": "scope", "scope": scope[1]}))
        if not candidates:
            return None, {}
        scale, source = max(candidates, key=lambda c: c[0])
        return scale, {"scale": scale, **source}

    def _metrics(self, ra: Record, rb: Record, transform: Any, mode: str, tolerance: Any, scale: float | None) -> Metrics:
        both_hash = ra.hash is not None and rb.hash is not None
        same_bytes_possible = transform is None and ra.dtype == rb.dtype
        if (
            both_hash
            and same_bytes_possible
            and ra.hash == rb.hash
            and (self.trust_hashes or ra.array is None or rb.array is None)
        ):
            return compare_hashes(ra.hash, rb.hash)  # type: ignore[arg-type]
        if mode == "bitwise":
            if both_hash and same_bytes_possible:
                return compare_hashes(ra.hash, rb.hash)  # type: ignore[arg-type]
            if ra.array is not None and rb.array is not None:
                return self._read_and(ra, rb, transform, lambda a, b: Metrics(kind="hash", identical=identical_arrays(a, b)))
            return Metrics(kind="none", identical=False, note="bitwise mode needs hashes or data on both sides")
        if mode != "stats" and ra.array is not None and rb.array is not None:
            if self.ranges is not None and _splits(ra, rb, transform, self.split_bytes):
                return self._measure_apart(ra, rb, tolerance, scale)
            return self._read_and(ra, rb, transform, lambda a, b: compare_arrays(a, b, tolerance, scale))
        if ra.stats is not None and rb.stats is not None:
            return compare_stats(ra.stats, rb.stats, tolerance, scale)
        if both_hash:
            return compare_hashes(ra.hash, rb.hash)  # type: ignore[arg-type]
        return Metrics(kind="none", identical=False, note="nothing comparable: the two records kept different levels")

    def _read_and(self, ra: Record, rb: Record, transform: Any, measure: Callable[[np.ndarray, np.ndarray], Metrics]) -> Metrics:
        a, b = self.read_pair(ra, rb, transform)
        metrics = measure(a, b)
        self.progress(a.nbytes + b.nbytes)
        return metrics

    def _measure_apart(self, ra: Record, rb: Record, tolerance: Tolerance, scale: float | None) -> Metrics:
        """The metrics of a large pair, its element ranges measured by :attr:`ranges` (whole blocks,
        about a quarter of ``split_bytes`` each) and folded in order: the bits of one pass. Ranges
        first say only whether their bytes agree; where some do and others do not, the sums of those
        that agree are asked for next (a tensor identical whole costs a byte comparison)."""
        ranges = self.ranges
        assert ranges is not None  # _splits is asked only where ranges are given
        dtypes = [
            _checked_meta(trace, self.rank, record, side).dtype.numpy
            for trace, record, side in ((self.ta, ra, "A"), (self.tb, rb, "B"))
        ]
        size = math.prod(ra.shape)  # type: ignore[arg-type]
        piece = max(1, self.split_bytes // 4 // (dtypes[0].itemsize + dtypes[1].itemsize) // BLOCK) * BLOCK
        found = ranges(ra, rb, tolerance, scale, [(start, min(start + piece, size), False) for start in range(0, size, piece)])
        unsummed = [part for part in found if part.blocks is None]
        if unsummed and len(unsummed) < len(found):
            summed = iter(ranges(ra, rb, tolerance, scale, [(part.start, part.stop, True) for part in unsummed]))
            found = [next(summed) if part.blocks is None else part for part in found]
        self.progress(size * dtypes[0].itemsize + math.prod(rb.shape) * dtypes[1].itemsize)  # type: ignore[arg-type]
        return fold_ranges(found, ra.shape, dtypes[0], dtypes[1], tolerance, scale)  # type: ignore[arg-type]

    def read_pair(self, ra: Record, rb: Record, transform: Any) -> tuple[np.ndarray, np.ndarray]:
        """The data of A's and B's record, B brought into A's layout."""
        a = _read_checked(self.ta, self.rank, ra, "A")
        b = _read_checked(self.tb, self.rank, rb, "B")
        return a, (transform.apply(b) if transform is not None else b)


def typical_rms(view: RankView, step: int) -> dict[tuple[str, str], float]:
    """The median RMS of A's tensors per (stage, role group) in ``step``, from recorded statistics.

    The default ``atol`` scales with the larger of a tensor's own RMS and this: an error far below
    the typical magnitude of comparable tensors is rounding noise, even on a tensor that is
    mathematically zero and numerically noise (the gradient of an attention key's bias).
    """
    found: dict[tuple[str, str], list[float]] = {}
    for (stage, _), records in view.step_records(step).items():
        for record in records:
            rms = record_rms(record)
            if rms is not None and rms > 0:
                found.setdefault((stage, ROLE_GROUPS[record.role]), []).append(rms)
    return {key: float(np.median(values)) for key, values in found.items()}


def _read_checked(trace: Trace, rank: int, record: Record, side: str) -> np.ndarray:
    """Read a record's array; the array must hold what the record says (untrusted input)."""
    array = trace.read(rank, record.array)  # type: ignore[arg-type]
    _check_holds(trace, rank, record, side, dtype_of(array).name, array.shape)
    return array


def _checked_meta(trace: Trace, rank: int, record: Record, side: str) -> ArrayMeta:
    """The metadata of a record's array, which must hold what the record says (no data is read)."""
    meta = trace.parts[rank].array_meta(record.array)  # type: ignore[arg-type]
    _check_holds(trace, rank, record, side, meta.dtype.name, meta.shape)
    return meta


def _check_holds(trace: Trace, rank: int, record: Record, side: str, dtype: str, shape: tuple[int, ...]) -> None:
    """A record's array holds ``dtype`` and ``shape``: what the record says, or the trace is corrupt."""
    if shape != record.shape or dtype != record.dtype:
        raise TableMismatchError(
            f"{side} {trace.path}: rank_{rank} tensor {record.id} says {record.dtype}{list(record.shape or [])}, "
            f"its array {record.array} holds {dtype}{list(shape)}; "
            "the trace is corrupt (tracespec validate tells more)"
        )


def _splits(ra: Record, rb: Record, transform: Transform | None, split_bytes: int) -> bool:
    """The pair is measured in pieces: its two tensors hold ``split_bytes`` or more, and B's elements
    are A's in the same flat order (no transform, or reshapes only)."""
    if transform is not None and any(name != "reshape" for name, _ in transform.ops):
        return False
    sizes = [math.prod(r.shape or ()) * numpy_dtype(r.dtype).itemsize for r in (ra, rb)]  # type: ignore[arg-type]
    return sum(sizes) >= split_bytes


def measure_pair_range(
    trace_a: Trace,
    trace_b: Trace,
    rank: int,
    ra: Record,
    rb: Record,
    piece: tuple[int, int, bool],
    tolerance: Tolerance,
    scale: float | None,
) -> RangeSums:
    """Elements ``start`` to ``stop`` of A's and B's record, read alone and measured
    (:func:`~tracespec.compare.metrics.measure_range`); ``piece`` is (start, stop, sums wanted
    where the bytes agree). A range of a large pair, on a Dask worker (:data:`PairRanges`)."""
    start, stop, sums_if_identical = piece
    a, b = (
        trace.read_range(rank, _checked_meta(trace, rank, record, side).name, start, stop)
        for trace, record, side in ((trace_a, ra, "A"), (trace_b, rb, "B"))
    )
    return measure_range(a, b, start, tolerance, scale, sums_if_identical=sums_if_identical)


def _content_key(ra: Record, rb: Record, transform: str | None) -> tuple[Any, ...] | None:
    """What identifies a pair of tensors: their content hashes, else their stored arrays."""
    if ra.hash is not None and rb.hash is not None:
        return ("hash", ra.hash, rb.hash, ra.shape, rb.shape, transform)
    if ra.array is not None and rb.array is not None:
        return ("array", ra.array, rb.array, transform)
    return None


class _RankComparison:
    """Builds and compares the units of one rank: one unit per call match (see
    :class:`~tracespec.compare.calls.CallMatch`), plus the records outside calls of matched nodes."""

    def __init__(
        self, view_a: RankView, view_b: RankView, alignment: Alignment, selection: _Selection, comparer: _Comparer
    ) -> None:
        self.va, self.vb, self.alignment = view_a, view_b, alignment
        self.selection, self.comparer = selection, comparer
        self.matches = {m.a: m for m in alignment.matches if selection.wants(view_a.nodes[m.a].route)}
        self.call_matches = [cm for cm in alignment.calls if selection.wants(view_a.nodes[cm.a[-1][0]].route)]
        self.by_member = {ref: cm for cm in self.call_matches for ref in cm.a}
        self.unpaired_records = {"a": 0, "b": 0}
        self.compared_records = 0
        self.typical: dict[int, dict[tuple[str, str], float]] = {}

    def _unit(
        self,
        step: int,
        stage: str,
        a: int,
        b: int,
        call: int | None,
        begin: int | None,
        end: int | None,
        match: CallMatch | None = None,
    ) -> UnitResult:
        na, nb = self.va.nodes[a], self.vb.nodes[b]
        ancestors = tuple(self.va.ancestors(a))
        unit = UnitResult(
            step,
            self.va.rank,
            stage,
            a,
            b,
            na.route,
            nb.route,
            na.class_name,
            nb.class_name,
            call,
            begin,
            end,
            len(ancestors),
            ancestors,
            a_site=self.va.op_site(a),
            b_site=self.vb.op_site(b),
        )
        if match is not None:
            unit.method = match.method
            unit.inside = match.inside
            if len(match.a) > 1 or len(match.b) > 1:
                unit.a_routes = tuple(self.va.nodes[n].route for n, _ in match.a)
                unit.b_routes = tuple(self.vb.nodes[n].route for n, _ in match.b)
        else:
            unit.method = self.matches[a].method
        return unit

    def _results(
        self,
        step: int,
        stage: str,
        a: tuple[int, int | None],
        b: tuple[int, int | None],
        roles: tuple[str, ...],
        transforms: dict[str, Any],
    ) -> list[RecordResult]:
        """Compare the records of A's (node, call) with B's, of the given roles, paired by role and slot."""
        recs_a = [r for r in self.va.call_records(step, stage, a[0], a[1]) if r.role in roles]
        recs_b = [r for r in self.vb.call_records(step, stage, b[0], b[1]) if r.role in roles]
        by_key = {(r.role, r.slot): r for r in recs_b}
        pairs = []
        only_a = []
        for record in recs_a:
            other = by_key.pop((record.role, record.slot), None)
            if other is None:
                only_a.append(record)
            else:
                pairs.append((record, other))
        self.unpaired_records["a"] += len(only_a)
        self.unpaired_records["b"] += len(by_key)
        self.compared_records += len(pairs)
        route = self.va.nodes[a[0]].route
        typical = self.typical.get(step)
        if typical is None:
            self.typical = {step: typical_rms(self.va, step)}  # steps are walked in order
            typical = self.typical[step]
        results = [
            self.comparer.compare(route, ra, rb, transforms, typical.get((stage, ROLE_GROUPS[ra.role]))) for ra, rb in pairs
        ]
        # what the unit computed on one side only is said, with the side (inputs and parameters
        # are only counted: exporters and ports pass them differently)
        results += [_missing(record, "a") for record in only_a if record.role in _OWN_ROLES]
        results += [_missing(record, "b") for record in by_key.values() if record.role in _OWN_ROLES]
        return results

    def _call_units(self, step: int, stage: str, earlier: dict[tuple[str, int, int | None], UnitResult]) -> list[UnitResult]:
        calls = self.va.calls_of(step, stage)
        # a match's unit comes when its last member finishes (calls are sorted by end)
        last_position: dict[int, int] = {}
        first_begin: dict[int, int] = {}  # a group's unit begins where its first member's call does
        for position, c in enumerate(calls):
            match = self.by_member.get((c.node, c.call))
            if match is not None and (match.backward or stage != "backward"):
                last_position[id(match)] = position
                first_begin[id(match)] = min(c.begin, first_begin.get(id(match), c.begin))
        last_call = {c.node: c.call for c in calls}
        units = []
        for position, c in enumerate(calls):
            match = self.by_member.get((c.node, c.call))
            if match is None or last_position.get(id(match)) != position:
                continue
            (a_first, a_last), (b_first, b_last) = (match.a[0], match.a[-1]), (match.b[0], match.b[-1])
            # a group is named by the call that computes its output, or by its layer where the
            # others only pass values through
            name_a, name_b = (a_first, b_first) if match.params else (a_last, b_last)
            unit = self._unit(step, stage, name_a[0], name_b[0], name_a[1], first_begin[id(match)], c.end, match)
            unit.b_call = name_b[1]
            node_a, node_b = (a_first[0], None), (b_first[0], None)
            if stage == "forward":
                unit.upstream = self._results(step, stage, a_first, b_first, ("input",), match.transforms)
                unit.outputs = self._results(step, stage, a_last, b_last, ("output",), match.transforms)
                if match.params:
                    unit.params = self._results(step, stage, node_a, node_b, _FORWARD_PARAMS, match.transforms)
            elif stage == "backward":
                unit.upstream = self._results(step, stage, a_last, b_last, ("grad_output",), match.transforms)
                forward = earlier.get(("forward", name_a[0], name_a[1]))
                if forward is not None:
                    unit.upstream += forward.upstream + forward.params
                unit.outputs = self._results(step, stage, a_first, b_first, ("grad_input",), match.transforms)
                if match.params and last_call[a_first[0]] == a_first[1]:
                    unit.outputs += self._results(step, stage, node_a, node_b, ROLES, match.transforms)
            else:
                unit.outputs = self._results(step, stage, a_last, b_last, ROLES, match.transforms)
            units.append(unit)
            earlier[(stage, name_a[0], name_a[1])] = unit
        return units

    def stage_units(self, step: int, stage: str, earlier: dict[tuple[str, int, int | None], UnitResult]) -> list[UnitResult]:
        """Units of (step, stage) in execution order; ``earlier`` indexes units by (stage, node, call)."""
        units = self._call_units(step, stage, earlier)
        called = {c.node for c in self.va.calls_of(step, stage) if (c.node, c.call) in self.by_member}
        records = self.va.step_records(step)
        for a in sorted(self.matches):
            if a in called or not records.get((stage, a)):
                continue
            # records outside any call: parameters of a node that did not run, gradients of a
            # backward without call rows, and the whole update stage
            match = self.matches[a]
            unit = self._unit(step, stage, a, match.b, None, None, None)
            unit.outputs = self._results(step, stage, (a, None), (match.b, None), ROLES, match.transforms)
            if stage == "update":
                unit.upstream = _parameter_history(earlier, a)
            if unit.outputs:
                units.append(unit)
                earlier[(stage, a, None)] = unit
        self.comparer.benign.explain(units)  # kink flips and what they explain: benign, before diagnosis
        classify_units(units)
        return units


def _squeezed(shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(extent for extent in shape if extent != 1)


_OWN_ROLES: Final = ("output", "grad_input")


def _missing(record: Record, side: str) -> RecordResult:
    """A record of ``side`` without a counterpart: not measured, and said so."""
    other = "B" if side == "a" else "A"
    shape = list(record.shape) if record.shape is not None else None
    result = RecordResult(
        role=record.role,
        slot=record.slot,
        call=record.call,
        status="skipped",
        note=f"only in {side.upper()}: {other} recorded no {record.role}[{record.slot}] for this call",
        mismatch={
            "kind": "missing",
            "shape": {"a": shape if side == "a" else None, "b": shape if side == "b" else None},
            "dtype": {"a": record.dtype if side == "a" else None, "b": record.dtype if side == "b" else None},
        },
    )
    if side == "a":
        result.dtype_a, result.shape_a = record.dtype, shape
    else:
        result.dtype_b, result.shape_b = record.dtype, shape
    return result


def _parameter_history(earlier: dict[tuple[str, int, int | None], UnitResult], node: int) -> list[RecordResult]:
    """What an optimizer update of ``node`` consumed: its parameters' forward values and gradients."""
    found: dict[tuple[str, str], RecordResult] = {}
    for (stage, owner, _), unit in earlier.items():
        if owner != node:
            continue
        for record in (*unit.params, *unit.outputs):
            if record.role in ("parameter", "buffer", "parameter_grad") and stage != "update":
                found.setdefault((record.role, record.slot), record)
    return list(found.values())


class _ColumnarPiece(Exception):
    """A task comparing some of a rank's steps met one that the column-wise path learns: which steps
    a walk compares record by record (and so which tensor pairs it judges and reuses) then depends on
    the steps before, and the rank is compared whole instead (:func:`compare_ranks_apart`)."""


@dataclass(slots=True)
class _RankState:
    ranked: _RankComparison
    columnar: ColumnarRank | None


class _StepWalk:
    """Walks the selected steps in order, in batches, every rank of each: record by record where a
    step's units are wanted in the verdict or its structure is new, column-wise where it repeats a
    structure learned (:mod:`tracespec.compare.columnar`); keeps the units of the detailed steps only,
    and a :class:`StepSummary` per step and rank."""

    def __init__(
        self,
        ranked: list[_RankState],
        selection: _Selection,
        detail_all: bool,
        first_step_only: bool,
        known_first: int | None = None,
        piece: bool = False,
    ) -> None:
        self.ranked = ranked
        self.first_selected = selection.steps[0]
        self.piece = piece
        """The walk covers some of the selected steps only (:func:`compare_rank`): a step learned
        for the column-wise path ends it (:class:`_ColumnarPiece`)."""
        self.ranks = [state.ranked.va.rank for state in ranked]
        self.known_first = known_first
        """Where this walk covers some of the ranks only (a Dask worker's one rank,
        :func:`compare_rank`): the first step where any rank diverged, once known; its units are
        kept as if these ranks had diverged there. None: found from these ranks' own summaries."""
        self.stages = selection.stages
        self.detail_all = detail_all
        self.first_step_only = first_step_only
        self.steps: list[int] = []
        """The steps compared (all selected ones, or up to the first divergent one)."""
        self.summaries: list[list[StepSummary]] = []
        """Per step compared, one summary per rank."""
        self.detailed: dict[int, list[list[list[UnitResult]]]] = {}
        """Units of the detailed steps: per step, per rank, per stage."""
        self.first_step: int | None = None

    def _per_record(self, state: _RankState, step: int, learn: bool) -> tuple[StepSummary, list[list[UnitResult]]]:
        ranked, comparer = state.ranked, state.ranked.comparer
        records, only_a, only_b = ranked.compared_records, ranked.unpaired_records["a"], ranked.unpaired_records["b"]
        comparer.dtypes = set()
        comparer.notes = {} if learn and state.columnar is not None else None
        earlier: dict[tuple[str, int, int | None], UnitResult] = {}
        stages = [ranked.stage_units(step, stage, earlier) for stage in self.stages]
        counts = (ranked.compared_records - records, ranked.unpaired_records["a"] - only_a, ranked.unpaired_records["b"] - only_b)
        if comparer.notes is not None:
            state.columnar.learn(step, stages, comparer.notes, *counts, comparer.dtypes)  # type: ignore[union-attr]
            comparer.notes = None
            if self.piece and state.columnar.templates:  # type: ignore[union-attr]
                raise _ColumnarPiece(step)
        return summarize_units(stages, *counts, comparer.dtypes), stages

    def _batch(
        self, state: _RankState, batch: list[int], detail: set[int]
    ) -> dict[int, tuple[StepSummary, list[list[UnitResult]] | None]]:
        found: dict[int, tuple[StepSummary, list[list[UnitResult]] | None]] = {}
        for step in batch:
            if step in detail or state.columnar is None:
                found[step] = self._per_record(state, step, learn=True)
        pending = [step for step in batch if step not in found]
        while pending and state.columnar is not None:
            fast = state.columnar.compare(pending)
            found.update((step, (summary, None)) for step, summary in fast.items())
            rest = [step for step in pending if step not in fast]
            if rest:  # a structure not learned yet: record by record once, learned for the next steps
                found[rest[0]] = self._per_record(state, rest[0], learn=True)
            pending = rest[1:]
        return found

    def run(self, steps: list[int]) -> None:
        for start in range(0, len(steps), BATCH_STEPS):
            batch = steps[start : start + BATCH_STEPS]
            detail = set(batch) if self.detail_all else {self.first_selected} & set(batch)
            results = [self._batch(state, batch, detail) for state in self.ranked]
            for state in self.ranked:  # the batch's table pages: read, and not needed again
                state.ranked.va.release(batch)
                state.ranked.vb.release(batch)
            for step in batch:
                summaries = [found[step][0] for found in results]
                diverged = (
                    any(summary.units["diverged"] for summary in summaries)
                    if self.known_first is None
                    else step == self.known_first
                )
                kept = step in detail or (diverged and self.first_step is None)
                if diverged and self.first_step is None:
                    self.first_step = step
                if kept:
                    units = [found[step][1] for found in results]
                    self.detailed[step] = [
                        stages if stages is not None else self._per_record(state, step, learn=False)[1]
                        for state, stages in zip(self.ranked, units)
                    ]
                self.steps.append(step)
                self.summaries.append(summaries)
                if self.first_step_only and self.first_step is not None:
                    return

    def series(self) -> list[dict[str, Any]]:
        """The verdict's ``steps``: per step, its record pairs, how many diverged, the worst ratio to
        tolerance, and the first unit that diverged (rank by rank)."""
        found = []
        for step, summaries in zip(self.steps, self.summaries):
            # as first_divergence: the earliest stage, then an introducing unit of any rank before
            # an inherited one, ranks in order
            firsts = [
                {"rank": rank, **summary.first} for rank, summary in zip(self.ranks, summaries) if summary.first is not None
            ]
            first = min(firsts, key=lambda f: (STAGE_ORDER.index(f["stage"]), f["kind"] != "introduced"), default=None)
            worst = max(summary.worst_ratio for summary in summaries)
            found.append(
                {
                    "step": step,
                    "records": sum(summary.records for summary in summaries),
                    "diverged": sum(summary.diverged_records for summary in summaries),
                    "worst_ratio": worst if math.isfinite(worst) else None,
                    "first": first,
                }
            )
        return found

    def totals(self) -> tuple[dict[str, int], dict[str, int]]:
        """Unit counts (the verdict's ``summary``) and record counts over every step compared."""
        units: dict[str, int] = {}
        records = {"records_compared": 0, "records_only_a": 0, "records_only_b": 0}
        for summaries in self.summaries:
            for summary in summaries:
                for key, value in summary.units.items():
                    units[key] = units.get(key, 0) + value
                records["records_compared"] += summary.records
                records["records_only_a"] += summary.only_a
                records["records_only_b"] += summary.only_b
        return units, records


def compare_traces(
    a: Trace | str | os.PathLike[str],
    b: Trace | str | os.PathLike[str],
    *,
    mode: str | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    rel_rmse: float | None = None,
    tolerances: Mapping[str, Mapping[str, Any]] | None = None,
    steps: Iterable[int | StepRange] | None = None,
    ranks: Iterable[int] | None = None,
    stages: Iterable[str] | None = None,
    routes: Iterable[str] | None = None,
    exclude: Iterable[str] | None = None,
    layer_map: LayerMap | str | os.PathLike[str] | None = None,
    trust_hashes: bool = True,
    progress: Progress | None = None,
    save_map: str | os.PathLike[str] | None = None,
    baseline: Trace | str | os.PathLike[str] | None = None,
    first_step_only: bool = False,
    columnar: bool = True,
    client: Any = None,
    storage_options: Mapping[str, Any] | None = None,
    cache: str | os.PathLike[str] | None = None,
    split_bytes: int = SPLIT_BYTES,
) -> Verdict:
    """Compare trace ``b`` against the reference ``a`` and say where they diverge.

    Parameters
    ----------
    a, b:
        Trace folders (or opened :class:`~tracespec.Trace` objects). A is the reference.
    mode:
        ``norm`` (the default: the norm-wise relative error at the dtype's noise level, and no
        element grossly off; ``strict`` by default where ``rtol`` or ``atol`` is given without
        ``rel_rmse``), ``strict`` (every element within tolerance), ``mean``, ``stats`` or
        ``bitwise``.
    rtol, atol:
        Override the dtype-aware elementwise defaults for every tensor (``atol`` is then absolute).
    rel_rmse:
        Override the dtype-aware norm-wise default (RMSE / scale) of mode ``norm``.
    tolerances:
        Per-route overrides, ``{"blocks.*.attn": {"rtol": 1e-3, "rel_rmse": 1e-4, "mode": "mean"}}``
        (glob patterns on A's routes; later entries win).
    steps, ranks, stages:
        What to compare (default: everything both traces have). A step may also be a range
        ``(first, last)``, both included, either end ``None`` (open): every step of both traces
        within it.
    routes, exclude:
        Glob patterns on A's routes: compare only nodes matching ``routes``, none matching ``exclude``.
    layer_map:
        A layer map (:func:`~tracespec.compare.layer_map.load_layer_map`) or the path of one.
    trust_hashes:
        Treat records with equal content hashes as identical without reading their data.
    progress:
        Called as data is compared, with (bytes done, bytes in all).
    save_map:
        Write the alignment found (of the first rank compared) to this path as a layer map, to
        correct and pass back as ``layer_map`` (:func:`~tracespec.compare.calls.alignment_layer_map`).
    baseline:
        A second recording of A's side with a harmless change (another thread count, device or
        run): each record's tolerance widens to the noise ``|A - baseline|`` shows
        (:mod:`tracespec.compare.baseline`).
    first_step_only:
        Stop at the first step where anything diverged (the quickest answer on a long run).
    columnar:
        Compare statistics and hashes of steps that repeat an earlier step's structure column-wise
        (:mod:`tracespec.compare.columnar`); ``False`` compares every record one by one, with the
        same results, slower.
    client:
        A ``dask.distributed.Client``: each rank (or, with fewer ranks than workers, each run of
        a rank's steps) is compared by a worker of its cluster, which opens A and B itself (give paths or URLs every worker can read), into the same verdict
        (:mod:`tracespec.compare.distributed`). None: in this process.
    split_bytes:
        With ``client``: a tensor pair whose two tensors hold this many bytes or more (default
        256 MiB) is measured in pieces of a quarter of that, by several workers at once (a huge
        embedding or its gradient), into the same metrics, bit for bit.
    storage_options, cache:
        For traces at URLs (``s3://...``): options of the store's file system
        (``{"endpoint_url": ...}``) and a folder that keeps what was fetched (docs/storage.md).
        They add to those of :func:`~tracespec.storage.location_defaults` (the CLI's
        ``--storage-option`` and ``--cache``) and travel with each task to the Dask workers.

    Returns
    -------
    Verdict
        ``status`` is ``"pass"`` or ``"fail"``; see ``spec/v1/verdict.md``.
    """
    if mode is not None and mode not in MODES:
        raise UsageError(f"mode {mode!r} is not one of {', '.join(MODES)}")
    if split_bytes < 1:
        raise UsageError(f"split_bytes must be 1 or more, not {split_bytes}")
    policy = TolerancePolicy.build(mode, rtol, atol, tolerances, rel_rmse)
    chosen_stages = tuple(stages) if stages is not None else STAGES
    unknown = [s for s in chosen_stages if s not in STAGES]
    if unknown:
        raise UsageError(f"stage(s) {unknown} not among {', '.join(STAGES)}")
    if layer_map is not None and not isinstance(layer_map, LayerMap):
        layer_map = load_layer_map(layer_map)
    options, folder = current_location_defaults()
    where = (
        {**options, **(storage_options or {})},
        os.fspath(cache) if cache is not None else str(folder) if folder is not None else None,
    )
    with location_defaults(*where):
        trace_a, trace_b = _open(a), _open(b)
        trace_a2 = open_baseline(baseline) if baseline is not None else None
    chosen_ranks = _select(ranks, trace_a.ranks, trace_b.ranks, "rank(s)")
    chosen_steps = _select(steps, trace_a.steps, trace_b.steps, "step(s)")
    if not chosen_steps:
        cut = "; ".join(
            f"{side} is incomplete (a recording cut short)"
            for side, trace in (("A", trace_a), ("B", trace_b))
            if not trace.complete
        )
        raise UsageError(
            f"A and B have no step in common (A has {spans(trace_a.steps)}, B has {spans(trace_b.steps)})"
            + (f"; {cut}" if cut else "")
            + ": nothing to compare"
        )
    selection = _Selection(
        chosen_steps, chosen_ranks, tuple(s for s in STAGE_ORDER if s in chosen_stages), tuple(routes or ()), tuple(exclude or ())
    )

    done = total = 0

    def advance(compared: int, planned: int = 0) -> None:
        nonlocal done, total
        done, total = done + compared, total + planned
        if progress is not None:
            progress(min(done, total), total)

    plan = RankPlan(
        _location(a, trace_a),
        _location(b, trace_b),
        _location(baseline, trace_a2) if baseline is not None and trace_a2 is not None else None,
        policy,
        selection,
        layer_map,
        trust_hashes,
        columnar,
        first_step_only,
        chosen_ranks[0] if save_map is not None else None,
        *where,
        uuid.uuid4().hex,
        split_bytes,
    )
    if client is not None:
        from tracespec.compare.distributed import cluster_workers, forget_on_cluster, map_on_cluster  # imports dask

        # each task totals its own bytes to compare, on its worker: the progress total grows as they start
        tasks = split_tasks(chosen_ranks, chosen_steps, cluster_workers(client))
        try:
            outcomes = compare_ranks_apart(plan, tasks, lambda pending: map_on_cluster(client, plan, pending, advance))
        finally:
            forget_on_cluster(client, plan.diff_id)
        walk = _merged_walk(plan, outcomes)
        map_text = next((o.layer_map_text for o in outcomes if o.layer_map_text is not None), None)
        if map_text is not None:
            _write_layer_map(save_map, map_text)  # type: ignore[arg-type]
        coverage = {str(o.rank): o.coverage for o in outcomes}
        unmatched = [item for o in outcomes for item in o.unmatched]
        baseline_used = sum(o.baseline_used for o in outcomes)
    else:
        advance(0, _bytes_to_compare(trace_a, trace_b, selection, policy.global_mode))
        for trace in (trace_a, trace_b):  # a pass over whole tables: their pages go (Part.release_pages)
            trace.release_pages()
        ranked: list[_RankState] = []
        coverage, unmatched = {}, []
        for rank in chosen_ranks:
            state, alignment, map_text = _rank_state(trace_a, trace_b, trace_a2, rank, plan, advance)
            if map_text is not None:
                _write_layer_map(save_map, map_text)  # type: ignore[arg-type]
            ranked.append(state)
            coverage[str(rank)], found = _rank_coverage(alignment)
            unmatched += [{"rank": rank, **item} for item in found]
        walk = _StepWalk(ranked, selection, plan.detail_all, first_step_only)
        walk.run(chosen_steps)
        baseline_used = sum(state.ranked.comparer.baseline.used for state in ranked if state.ranked.comparer.baseline is not None)
    if progress is not None:
        progress(total, total)
    dtypes: set[str] = set()
    for summaries in walk.summaries:
        for summary in summaries:
            dtypes |= summary.dtypes
    ordered = [
        [u for stages in walk.detailed[step] for u in stages[position]]
        for step in sorted(walk.detailed)
        for position in range(len(selection.stages))
    ]
    units = [u for group in ordered for u in group]
    culprit = first_divergence(ordered)
    tolerances = policy.to_json(sorted(dtypes))
    if trace_a2 is not None:
        tolerances["baseline"] = {"path": str(trace_a2.path), "factor": BASELINE_FACTOR, "records": baseline_used}
    return _build_verdict(trace_a, trace_b, selection, tolerances, layer_map, coverage, unmatched, units, culprit, walk)


@dataclass(frozen=True, slots=True)
class RankPlan:
    """What comparing one rank needs, small and picklable: the traces travel as paths or URLs, never
    as data, with the storage options and cache folder to open them, and whoever compares a rank
    (a Dask worker) opens them itself."""

    a: str
    b: str
    baseline: str | None
    policy: TolerancePolicy
    selection: _Selection
    layer_map: LayerMap | None
    trust_hashes: bool
    columnar: bool
    first_step_only: bool
    map_rank: int | None
    """The rank whose alignment becomes the layer map of ``save_map`` (None: no map wanted)."""
    storage_options: Mapping[str, Any]
    """For traces at URLs (``--storage-option``): the options of the store's file system."""
    cache: str | None
    """For traces at URLs (``--cache``): the folder that keeps what was fetched."""
    diff_id: str = ""
    """Names this comparison: a worker keeps the traces it opened for the next task of the same one."""
    split_bytes: int = SPLIT_BYTES
    """A tensor pair of this many bytes or more (A and B together) is measured in pieces, where a
    task can hand them out (:data:`PairRanges`)."""

    @property
    def detail_all(self) -> bool:
        return len(self.selection.steps) <= DETAIL_STEPS


@dataclass(frozen=True, slots=True)
class RankTask:
    """A piece of a comparison that one worker does: rank ``rank``'s ``steps`` (a run of the
    selected steps, or all of them)."""

    rank: int
    steps: tuple[int, ...]
    known_first: int | None = None
    """The first step where any rank diverged, once known (:func:`compare_ranks_apart`)."""
    seeds: Mapping[tuple[Any, ...], Judgment] = field(default_factory=dict)
    """The judgments of tensor pairs first judged before ``steps`` (by other tasks), reused as the
    walk over every step reuses them."""


@dataclass(slots=True)
class RankOutcome:
    """What one task came to: summaries and the units of the detailed steps (results, no tensor
    data), as a worker sends it back."""

    task: RankTask
    coverage: dict[str, Any]
    unmatched: list[dict[str, Any]]
    steps: list[int]
    summaries: list[StepSummary]
    detailed: dict[int, list[list[UnitResult]]]
    """Per detailed step, the units per stage."""
    first_step: int | None
    baseline_used: int
    layer_map_text: str | None
    judged: dict[tuple[Any, ...], Judgment] = field(default_factory=dict)
    """The tensor pairs (by content hash) first judged in these steps, in order, with their judgment."""
    rejudged: set[tuple[Any, ...]] = field(default_factory=set)
    """Tensor pairs whose results an explanation changed after their judgment."""
    whole: bool = False
    """The task met a step that the column-wise path learns, and stopped: compare the rank whole."""

    @property
    def rank(self) -> int:
        return self.task.rank


def _location(given: Trace | str | os.PathLike[str], trace: Trace) -> str:
    """Where a worker opens a trace: the URL, or the folder as an absolute path (a worker's working
    directory is not the caller's)."""
    text = str(trace.path) if isinstance(given, Trace) else os.fspath(given)
    return text if "://" in text else os.path.abspath(text)


def _rank_state(
    trace_a: Trace,
    trace_b: Trace,
    trace_a2: Trace | None,
    rank: int,
    plan: RankPlan,
    advance: Callable[[int], None],
    want_map: bool = True,
    ranges: PairRanges | None = None,
) -> tuple[_RankState, Alignment, str | None]:
    """A rank aligned and ready to walk, its alignment, and the layer map text where ``plan`` wants it."""
    steps = plan.selection.steps
    view_a, view_b = RankView(trace_a, rank, steps), RankView(trace_b, rank, steps)
    alignment = align_trees(view_a, view_b, plan.layer_map)
    map_text = alignment_layer_map(alignment, view_a, view_b, plan.layer_map) if want_map and rank == plan.map_rank else None
    noise_baseline = Baseline(trace_a2, rank, steps, view_a) if trace_a2 is not None else None
    comparer = _Comparer(
        trace_a,
        trace_b,
        rank,
        plan.policy,
        plan.trust_hashes,
        advance,
        ScopeScales(view_a),
        noise_baseline,
        ranges,
        plan.split_bytes,
    )
    columnar = ColumnarRank(view_a, view_b, plan.policy) if plan.columnar and not plan.detail_all else None
    return _RankState(_RankComparison(view_a, view_b, alignment, plan.selection, comparer), columnar), alignment, map_text


def compare_rank(
    plan: RankPlan,
    task: RankTask,
    progress: Callable[[int, int], None] | None = None,
    open_trace: Callable[[str], Trace] = load_trace,
    ranges: PairRanges | None = None,
) -> RankOutcome:
    """Compare one rank's steps on their own (a Dask task): open the traces, align the rank over
    every selected step, walk the task's steps.

    ``progress`` is called with (bytes compared, bytes to compare) as they become known: first the
    task's total, then each tensor pair's bytes. ``open_trace`` opens A and B (a worker's keeps
    them for its next task of the same comparison). ``ranges`` measures the pairs of at least
    ``plan.split_bytes`` in pieces (on other workers); None: here, whole.
    """
    report = progress or (lambda done, total: None)
    with location_defaults(plan.storage_options, plan.cache):
        trace_a, trace_b = open_trace(plan.a), open_trace(plan.b)
        trace_a2 = open_baseline(plan.baseline) if plan.baseline is not None else None
        own = dataclasses.replace(plan.selection, ranks=[task.rank], steps=list(task.steps))
        report(0, _bytes_to_compare(trace_a, trace_b, own, plan.policy.global_mode))
        for trace in (trace_a, trace_b):  # a pass over whole tables: their pages go (Part.release_pages)
            trace.release_pages()
        first_piece = task.steps[0] == plan.selection.steps[0]
        state, alignment, map_text = _rank_state(
            trace_a, trace_b, trace_a2, task.rank, plan, lambda nbytes: report(nbytes, 0), first_piece, ranges
        )
        state.ranked.comparer.seed(task.seeds)
        piece = len(task.steps) < len(plan.selection.steps)
        walk = _StepWalk([state], plan.selection, plan.detail_all, plan.first_step_only, task.known_first, piece)
        coverage, unmatched = _rank_coverage(alignment)
        try:
            walk.run(list(task.steps))
        except _ColumnarPiece:
            return RankOutcome(task, coverage, [], [], [], {}, None, 0, None, whole=True)
    baseline = state.ranked.comparer.baseline
    return RankOutcome(
        task,
        coverage,
        [{"rank": task.rank, **item} for item in unmatched],
        walk.steps,
        [summaries[0] for summaries in walk.summaries],
        {step: ranks[0] for step, ranks in walk.detailed.items()},
        walk.first_step,
        baseline.used if baseline is not None else 0,
        map_text,
        state.ranked.comparer.own_judgments() if piece else {},
        state.ranked.comparer.rejudged() if piece else set(),
    )


TASKS_PER_WORKER: Final = 2
"""Tasks per worker when a rank's steps are split: enough to even out steps of unequal cost."""


def split_tasks(ranks: list[int], steps: list[int], workers: int) -> list[RankTask]:
    """One task per rank, or where there are fewer ranks than :data:`TASKS_PER_WORKER` tasks per
    worker, each rank's steps in runs of nearly equal length (at least a step each)."""
    pieces = max(1, min(len(steps), -(-TASKS_PER_WORKER * workers // len(ranks))))
    bounds = [round(i * len(steps) / pieces) for i in range(pieces + 1)]
    return [RankTask(rank, tuple(steps[bounds[i] : bounds[i + 1]])) for rank in ranks for i in range(pieces)]


def _fingerprint(judgment: Judgment) -> str:
    metrics, status, noise = judgment
    return json.dumps([metrics.to_json(), status, noise])


def compare_ranks_apart(
    plan: RankPlan, tasks: list[RankTask], run: Callable[[list[RankTask]], list[RankOutcome]]
) -> list[RankOutcome]:
    """The outcome of every rank, compared in ``tasks`` (:func:`split_tasks`) exactly as the walk
    over all ranks and steps together would compare them.

    ``run`` maps :func:`compare_rank` over tasks and returns the outcomes in order (on Dask
    workers). What a task cannot know alone is found from the outcomes, and the tasks it changes
    are run again, told it:

    - the judgments of tensor pairs first judged in a rank's earlier steps (a parameter updated at
      the end of one step is the next step's forward parameter: one tensor pair, judged once, in
      the step where it first appears). A task whose own judgment of such a pair differs from the
      earlier task's is compared again, seeded with it. Where an explanation (kinks) changed a pair
      that earlier steps also hold, or a task met a step learned for the column-wise path (whose
      record-by-record steps depend on the steps before), the rank is compared whole;
    - the first step where *another* rank diverged: the walk over all ranks keeps every rank's units
      there, so the task holding that step is compared again, told it (where every step is
      detailed, none is).
    """
    by_rank = _resolved(plan, tasks, run(tasks), run)
    first = min((o.first_step for pieces in by_rank.values() for o in pieces if o.first_step is not None), default=None)
    again = [
        o.task
        for pieces in by_rank.values()
        for o in pieces
        if not plan.detail_all and first is not None and first in o.task.steps and o.first_step != first
    ]
    if again:
        redone = {(t.rank, t.steps): o for t, o in zip(again, run([dataclasses.replace(t, known_first=first) for t in again]))}
        by_rank = {rank: [redone.get((o.rank, o.task.steps), o) for o in pieces] for rank, pieces in by_rank.items()}
    return [_joined(plan, by_rank[rank], first) for rank in sorted(by_rank, key=[t.rank for t in tasks].index)]


def _resolved(
    plan: RankPlan, tasks: list[RankTask], outcomes: list[RankOutcome], run: Callable[[list[RankTask]], list[RankOutcome]]
) -> dict[int, list[RankOutcome]]:
    """Per rank, its tasks' outcomes in step order, each with the judgments of earlier steps (see
    :func:`compare_ranks_apart`): tasks seeded again, ranks compared whole, until every one holds."""
    by_rank: dict[int, list[RankOutcome]] = {}
    for outcome in outcomes:
        by_rank.setdefault(outcome.rank, []).append(outcome)
    while True:
        pending: list[RankTask] = []
        for rank, pieces in by_rank.items():
            if len(pieces) == 1:
                continue
            redo = _seeds_needed(pieces, plan.baseline is not None)
            if redo is None:
                pending.append(RankTask(rank, tuple(plan.selection.steps)))
            else:
                pending += redo
        if not pending:
            return by_rank
        for task, outcome in zip(pending, run(pending)):
            pieces = by_rank[task.rank]
            if len(task.steps) == len(plan.selection.steps):
                by_rank[task.rank] = [outcome]
            else:
                by_rank[task.rank] = [outcome if o.task.steps == task.steps else o for o in pieces]


def _seeds_needed(pieces: list[RankOutcome], counted: bool) -> list[RankTask] | None:
    """The tasks of one rank to compare again with the judgments of the steps before theirs (none:
    every piece holds); None where the rank must be compared whole. ``counted``: each judgment is
    also counted (a baseline's records), so one made again must be reused even where it is equal."""
    earlier: dict[tuple[Any, ...], Judgment] = {}
    redo = []
    for piece in pieces:
        if piece.whole:
            return None
        inherited = {key: earlier[key] for key in piece.judged if key in earlier}
        if piece.rejudged & (inherited.keys() | piece.task.seeds.keys()):
            return None  # an explanation here changes the results of earlier steps too
        if (counted and inherited) or any(_fingerprint(piece.judged[key]) != _fingerprint(j) for key, j in inherited.items()):
            redo.append(dataclasses.replace(piece.task, seeds={**piece.task.seeds, **inherited}))
        for key, judgment in piece.judged.items():
            earlier.setdefault(key, judgment)
    return redo


def _joined(plan: RankPlan, pieces: list[RankOutcome], first: int | None) -> RankOutcome:
    """One rank's outcome from its tasks' (in step order), with the units of the detailed steps."""
    if len(pieces) == 1:
        return pieces[0]
    steps = plan.selection.steps
    kept = set(steps) if plan.detail_all else {steps[0], first}
    head = pieces[0]
    return RankOutcome(
        RankTask(head.rank, tuple(steps)),
        head.coverage,
        head.unmatched,
        [step for piece in pieces for step in piece.steps],
        [summary for piece in pieces for summary in piece.summaries],
        {step: units for piece in pieces for step, units in piece.detailed.items() if step in kept},
        min((piece.first_step for piece in pieces if piece.first_step is not None), default=None),
        sum(piece.baseline_used for piece in pieces),
        head.layer_map_text,
    )


def _merged_walk(plan: RankPlan, outcomes: list[RankOutcome]) -> _StepWalk:
    """The walk over all ranks together, from each rank's (:func:`compare_ranks_apart`)."""
    walk = _StepWalk([], plan.selection, plan.detail_all, plan.first_step_only)
    walk.ranks = [o.rank for o in outcomes]
    walk.first_step = min((o.first_step for o in outcomes if o.first_step is not None), default=None)
    stop = walk.first_step if plan.first_step_only and walk.first_step is not None else None
    walk.steps = [step for step in plan.selection.steps if stop is None or step <= stop]
    by_step = [dict(zip(o.steps, o.summaries)) for o in outcomes]
    walk.summaries = [[found[step] for found in by_step] for step in walk.steps]
    walk.detailed = {step: [o.detailed[step] for o in outcomes] for step in walk.steps if step in outcomes[0].detailed}
    return walk


def _write_layer_map(path: str | os.PathLike[str], text: str) -> None:
    try:
        Path(path).write_text(text, encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot write the layer map to {os.fspath(path)}: {exc.strerror}") from None


def _bytes_to_compare(trace_a: Trace, trace_b: Trace, selection: _Selection, mode: str) -> int:
    if mode == "stats":
        return 0
    total = 0
    for trace in (trace_a, trace_b):
        for rank in selection.ranks:
            table = trace.parts[rank].tensors.select(["step", "array", "dtype", "shape"])
            if table.column("array").null_count == table.num_rows:
                continue  # statistics and hashes only (a null count is known without reading the column)
            table = table.filter(pc.is_valid(table.column("array")))  # column-wise: most rows of a long run keep no data
            table = table.filter(pc.is_in(table.column("step"), value_set=pa.array(selection.steps, pa.int64())))
            seen = set()
            for row in table.to_pylist():
                if row["array"] in seen:
                    continue
                seen.add(row["array"])
                total += math.prod(row["shape"]) * numpy_dtype(row["dtype"]).itemsize
    return total


def _describe_trace(trace: Trace) -> dict[str, Any]:
    m = trace.manifest
    return {
        "path": str(trace.path),
        "framework": m.framework,
        "framework_version": m.framework_version,
        "complete": trace.complete,
    }


def _rank_coverage(alignment: Alignment) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A rank's entry of the verdict's ``coverage.ranks``, and its unmatched nodes and calls."""
    matched = len(alignment.matches)
    coverage: dict[str, Any] = {
        "nodes_a": alignment.nodes_a,
        "nodes_b": alignment.nodes_b,
        "matched": matched,
        "by_method": alignment.method_counts(),
        "matched_fraction_a": matched / alignment.nodes_a if alignment.nodes_a else 1.0,
        "matched_fraction_b": matched / alignment.nodes_b if alignment.nodes_b else 1.0,
        "calls": alignment.call_coverage(),
    }
    unmatched: list[dict[str, Any]] = [
        {"side": u.side, "route": u.route, "class_name": u.class_name, "reason": u.reason} for u in alignment.unmatched
    ]
    unmatched += [
        {"side": u.side, "route": u.route, "class_name": u.class_name, "call": u.call, "reason": u.reason}
        for u in alignment.unmatched_calls
    ]
    return coverage, unmatched


def _build_verdict(
    trace_a: Trace,
    trace_b: Trace,
    selection: _Selection,
    tolerances: dict[str, Any],
    layer_map: LayerMap | None,
    rank_coverage: dict[str, dict[str, Any]],
    unmatched: list[dict[str, Any]],
    units: list[UnitResult],
    culprit: UnitResult | None,
    walk: _StepWalk,
) -> Verdict:
    diverged = [u for u in units if u.status == "diverged"]
    summary, counts = walk.totals()
    identical = summary["units"] > 0 and summary["diverged"] == summary["pass_within_tolerance"] == 0
    coverage: dict[str, Any] = {"ranks": rank_coverage}
    coverage.update(counts)
    # what one trace holds and the other does not (a recording cut short): never compared, said so
    for what, of_a, of_b in (("steps", trace_a.steps, trace_b.steps), ("ranks", trace_a.ranks, trace_b.ranks)):
        coverage[f"{what}_only_a"] = sorted(set(of_a) - set(of_b))
        coverage[f"{what}_only_b"] = sorted(set(of_b) - set(of_a))
    first = None
    if culprit is not None:
        worst = culprit.evidence_record()
        first = {
            "step": culprit.step,
            "rank": culprit.rank,
            "stage": culprit.stage,
            "kind": "introduced" if culprit.divergence == "introduced" else "inherited",
            "call": culprit.call,
            "a": culprit.side_json("a"),
            "b": culprit.side_json("b"),
            "alignment": culprit.method,
            "record": {"role": worst.role, "slot": worst.slot} if worst is not None else None,
            "metrics": worst.metrics.to_json() if worst is not None and worst.metrics is not None else None,
            "mismatch": worst.mismatch if worst is not None else None,
            "evidence": culprit.evidence,
        }
    position = {id(u): i for i, u in enumerate(units)}

    def badness(unit: UnitResult) -> float:
        worst = unit.worst_output()
        return worst.badness if worst is not None else 0.0

    def worst_metrics(unit: UnitResult) -> dict[str, Any] | None:
        worst = unit.worst_output()
        return worst.metrics.to_json() if worst is not None and worst.metrics is not None else None

    worst_units = sorted(diverged, key=lambda u: (-badness(u), position[id(u)]))
    return Verdict(
        verdict_version=VERDICT_VERSION,
        status="fail" if summary["diverged"] else "pass",
        a=_describe_trace(trace_a),
        b=_describe_trace(trace_b),
        selection={
            "steps": selection.steps,
            "ranks": selection.ranks,
            "stages": list(selection.stages),
            "routes": list(selection.routes),
            "exclude": list(selection.exclude),
            "layer_map": layer_map.to_json() if layer_map is not None else None,
            "first_step_only": walk.first_step_only,
            "detail_steps": sorted(walk.detailed),
        },
        tolerances=tolerances,
        first_divergence=first,
        coverage=coverage,
        summary=summary,
        nodes=[u.to_json() for u in units],
        worst=[
            {
                "step": u.step,
                "rank": u.rank,
                "stage": u.stage,
                "route": u.a_route,
                "call": u.call,
                "divergence": u.divergence,
                "metrics": worst_metrics(u),
            }
            for u in worst_units[:10]
        ],
        error_growth=error_growth(units),
        unmatched=unmatched,
        hint=next_step_hint(culprit, identical, len(unmatched)),
        benign=benign_differences(units),
        steps=walk.series(),
    )
