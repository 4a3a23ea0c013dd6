"""Align the calls of two runs by what they compute: op family, shapes and the recorded values.

Constraints: pure functions over trace metadata (statistics and hashes already in the tables, no
tensor data, no framework import); time O(n log n) plus small dynamic programs between anchors,
memory linear in the number of calls, so two runs of 10,000 calls align in about a second.

The unit is a *call*: one execution of a leaf module or op (a shared ``ReLU`` called twice is two
calls). Each side's leaf calls form a sequence in execution order, and the two sequences are
aligned in four passes:

1. **Anchors.** Pairs that a layer map or equal routes fixed, then pairs whose outputs have the
   same number of elements and nearly the same values (mean, RMS, min, max within
   :data:`ANCHOR_DISTANCE` of the RMS, or equal content hashes), each the other's only close
   partner. The longest chain of anchors in execution order on both sides is kept.
2. **Gaps.** Between consecutive anchors, the calls left over are aligned by a dynamic program that
   maximises the total :func:`similarity` (op family, input and output shapes, parameter sizes,
   values), so an op present on one side only (a ``Linear`` realised as a functional ``matmul``,
   a layer the other side does not record) stays unmatched without shifting its neighbours.
3. **Fusion.** A matched call whose partner also computes the unmatched calls next to it (a
   ``BatchNorm`` folded into the preceding ``Conv`` by an exporter, a ``Dropout`` that is the
   identity in eval mode) becomes a group compared at the group's boundary: the first member's
   inputs and the last member's outputs.
4. **What is left**: between consecutive groups, one call left on each side pairs up where it
   takes and gives tensors of the same sizes (a max pool ported as an average pool is a bug to
   report, not two unmatched calls); runs of calls of the same families in the same order pair
   up (past a divergence that changed sizes and values); and calls whose values are
   unmistakable pair up even against the order (a residual shortcut computed before the main path
   on one side, after it on the other); these fold too.
"""

from __future__ import annotations

import bisect
import itertools
import math
import operator
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Final, TypeVar

from tracespec.compare.families import PASS_THROUGH_FAMILIES, op_family
from tracespec.compare.sequence import diff_sequences, kept_pairs, pair_block
from tracespec.compare.view import RankView, Record

__all__ = [
    "ANCHOR_DISTANCE",
    "VALUE_CLASS_LIMIT",
    "CallInfo",
    "Pairing",
    "ValueSignature",
    "align_call_sequences",
    "describe_call",
    "similarity",
    "value_distance",
]

ANCHOR_DISTANCE: Final = 1e-4
"""Largest value distance (:func:`value_distance`) of an anchor: two float32 implementations of the
same op differ by ~1e-6 of the RMS in these statistics; a different tensor of the same shape
differs by far more than 1e-4."""

MIN_SIMILARITY: Final = 4.0
"""The least :func:`similarity` of a pair the gap alignment accepts: the same family and output
shape (5), or the same output shape and close values across families (a fused op, 2 + 4 - 2)."""

DP_CELLS: Final = 40_000
"""Largest gap (calls of A x calls of B) aligned by the exact dynamic program; larger gaps are
aligned greedily, in order, each call of A with the next similar call of B within 64 calls."""

FOLDABLE_FAMILIES: Final = frozenset({"batchnorm"}) | PASS_THROUGH_FAMILIES
"""Families an exporter or a port may fold into the call before them: a batch norm in eval mode
into the preceding convolution or linear layer, a pass-through into anything."""

FOLD_EVIDENCE: Final = 1e-3
"""A partner whose output is within this value distance of the call before a foldable op computes
that call alone: the op is missing on its side, not folded (a port that forgot a batch norm)."""

FOLDS_INTO: Final = frozenset({"conv", "linear", "matmul", "convtranspose"})
"""Families that absorb a following batch norm."""

COMPATIBLE_FAMILIES: Final = frozenset(
    {
        frozenset({"linear", "matmul"}),
        frozenset({"globalavgpool", "avgpool"}),
        frozenset({"globalavgpool", "mean"}),
        frozenset({"flatten", "reshape"}),
        frozenset({"maxpool", "globalmaxpool"}),
    }
)
"""Different families that can compute the same thing (a Linear exported as MatMul)."""


@dataclass(frozen=True, slots=True)
class ValueSignature:
    """What the tables say about one tensor's values: statistics and content hash."""

    shape: tuple[int, ...] | None
    mean: float | None
    rms: float | None
    min: float | None
    max: float | None
    hash: str | None

    @property
    def count(self) -> int | None:
        return None if self.shape is None else math.prod(self.shape)


@dataclass(frozen=True, slots=True)
class CallInfo:
    """One leaf call, as alignment sees it."""

    node: int
    call: int
    begin: int
    end: int
    route: str
    class_name: str
    family: str
    input: ValueSignature | None
    output: ValueSignature | None
    param_sizes: tuple[int, ...]


def _signature(record: Record | None) -> ValueSignature | None:
    if record is None:
        return None
    stats = record.stats
    rms = None
    if stats is not None and stats.l2 is not None:
        finite = stats.count - stats.nan_count - stats.inf_count
        rms = stats.l2 / finite**0.5 if finite > 0 else None
    return ValueSignature(
        record.shape,
        stats.mean if stats is not None else None,
        rms,
        stats.min if stats is not None else None,
        stats.max if stats is not None else None,
        record.hash,
    )


def _first(records: Iterable[Record], role: str) -> Record | None:
    found = [r for r in records if r.role == role and r.dtype is not None]
    if not found:
        return None
    return min(found, key=lambda r: (len(r.slot), r.slot))


def describe_call(view: RankView, step: int, node: int, call: int, begin: int, end: int, family: str | None = None) -> CallInfo:
    """The :class:`CallInfo` of one forward call of ``view``; ``family`` overrides the one of its class
    (a module that holds a single op computes that op's family)."""
    records = view.call_records(step, "forward", node, call)
    params = tuple(
        sorted(
            math.prod(r.shape)
            for r in view.call_records(step, "forward", node, None)
            if r.role == "parameter" and r.shape is not None
        )
    )
    meta = view.nodes[node]
    return CallInfo(
        node,
        call,
        begin,
        end,
        meta.route,
        meta.class_name,
        family or op_family(meta.class_name),
        _signature(_first(records, "input")),
        _signature(_first(records, "output")),
        params,
    )


def value_distance(a: ValueSignature | None, b: ValueSignature | None) -> float | None:
    """How far apart two tensors' values are, relative to their RMS (0: equal statistics or hashes);
    None when the tables do not say (no statistics) or the element counts differ."""
    if a is None or b is None or a.count != b.count:
        return None
    if a.hash is not None and a.hash == b.hash:
        return 0.0
    fields = ((a.mean, b.mean), (a.rms, b.rms), (a.min, b.min), (a.max, b.max))
    if any(x is None or y is None for x, y in fields):
        return None
    scale = max(a.rms or 0.0, b.rms or 0.0)
    worst = max(abs(x - y) for x, y in fields)  # type: ignore[operator]
    if scale <= 0:
        return 0.0 if worst == 0 else float("inf")
    return float(worst / scale)


def families_compatible(a: str, b: str) -> bool:
    return a == b or frozenset({a, b}) in COMPATIBLE_FAMILIES


def similarity(a: CallInfo, b: CallInfo) -> float:
    """How much evidence says ``a`` and ``b`` compute the same thing (higher is more)."""
    score = 3.0 if a.family == b.family else 1.0 if families_compatible(a.family, b.family) else -2.0
    if a.output is not None and b.output is not None and a.output.shape is not None and b.output.shape is not None:
        if a.output.shape == b.output.shape:
            score += 2
        elif a.output.count == b.output.count:
            score += 1
        elif not _resized(a.output.shape, b.output.shape):
            score -= 3
    if a.input is not None and b.input is not None and a.input.shape is not None and a.input.shape == b.input.shape:
        score += 1
    if a.param_sizes and b.param_sizes:
        # equal, or one side keeps more (Paddle's legacy BatchNorm holds its running statistics
        # as parameters)
        score += 1 if a.param_sizes == b.param_sizes else 0 if _within(a.param_sizes, b.param_sizes) else -1
    distance = value_distance(a.output, b.output)
    if distance is not None:
        score += 4 if distance <= ANCHOR_DISTANCE else 3 if distance <= 1e-2 else 1 if distance <= 1e-1 else 0
    return score


@dataclass(frozen=True, slots=True)
class Pairing:
    """A group of consecutive calls of A aligned with a group of consecutive calls of B (indices into
    the two sequences); ``method`` is ``anchor`` (given), ``dataflow`` or ``fused``."""

    a: tuple[int, ...]
    b: tuple[int, ...]
    method: str
    same_layer: bool = True
    """The first members are the same layer (one call each, or a group whose other members only pass
    values through, a Dropout in eval mode), so their parameters compare; False where a batch norm
    was folded into the partner's weights."""


_STATISTICS: Final = ("mean", "rms", "min", "max")


VALUE_CLASS_LIMIT: Final = 8
"""Most calls of one side that may share one output value and still pair up by value (a view, a
transpose and a copy of the keys; more is a constant, or a value too common to say anything)."""


def _value_anchors(
    seq_a: Sequence[CallInfo], seq_b: Sequence[CallInfo], taken_a: set[int], taken_b: set[int]
) -> list[tuple[int, int]]:
    """Pairs of calls whose outputs have equal element counts and nearly equal values.

    The calls of both sides with one output value form a class: one call each is a pair; more
    (views and transposes repeat their input's values) pair by the longest common subsequence of
    their families, in order. A class whose members disagree on who is close is left out.

    Candidates are found through one sorted index per statistic: a partner within
    :data:`ANCHOR_DISTANCE` is within it in every statistic, so the narrowest of the four windows
    holds it. That keeps the search near O(n log n) where one statistic is the same for many calls
    (every LayerNorm output has an RMS of 1, every ReLU output a minimum of 0).
    """
    Index = dict[int, dict[str, tuple[list[float], list[int]]]]

    def index(seq: Sequence[CallInfo], taken: set[int]) -> Index:
        buckets: dict[int, list[int]] = {}
        for i, info in enumerate(seq):
            out = info.output
            if i in taken or out is None or out.count is None or any(getattr(out, k) is None for k in _STATISTICS):
                continue
            buckets.setdefault(out.count, []).append(i)
        found: Index = {}
        for count, members in buckets.items():
            found[count] = {}
            for name in _STATISTICS:
                ordered = sorted(members, key=lambda i: getattr(seq[i].output, name))
                found[count][name] = ([getattr(seq[i].output, name) for i in ordered], ordered)
        return found

    def close(info: CallInfo, other: Sequence[CallInfo], buckets: Index) -> tuple[int, ...]:
        """The calls of ``other`` within ANCHOR_DISTANCE of ``info``'s output, in order; at most
        VALUE_CLASS_LIMIT + 1 of them."""
        out = info.output
        if out is None or out.count not in buckets or out.rms is None:
            return ()
        slack = ANCHOR_DISTANCE * max(out.rms, 1e-30) * 2  # the distance divides by the larger RMS
        windows = []
        for name, (keys, ids) in buckets[out.count].items():
            value = getattr(out, name)
            if value is None:
                return ()
            lo, hi = bisect.bisect_left(keys, value - slack), bisect.bisect_right(keys, value + slack)
            windows.append((hi - lo, ids, lo, hi))
        _, ids, lo, hi = min(windows, key=lambda w: w[0])
        found = []
        for k in ids[lo:hi]:
            distance = value_distance(out, other[k].output)
            if distance is not None and distance <= ANCHOR_DISTANCE:
                found.append(k)
                if len(found) > VALUE_CLASS_LIMIT:
                    break
        return tuple(sorted(found))

    index_a, index_b = index(seq_a, taken_a), index(seq_b, taken_b)
    pairs = []
    done: set[int] = set()
    for i, info in enumerate(seq_a):
        if i in taken_a or i in done:
            continue
        members_b = close(info, seq_b, index_b)
        members_a = close(info, seq_a, index_a)
        done.update(members_a)
        if not members_b or max(len(members_a), len(members_b)) > VALUE_CLASS_LIMIT:
            continue
        if any(close(seq_a[k], seq_b, index_b) != members_b for k in members_a) or any(
            close(seq_b[k], seq_a, index_a) != members_a for k in members_b
        ):
            continue  # no clear class: values that drift from call to call (a chain of tiny steps)
        if len(members_a) == len(members_b) == 1:
            pairs.append((members_a[0], members_b[0]))
            continue
        kept = _kept_where([seq_a[m].family for m in members_a], [seq_b[m].family for m in members_b], operator.eq)
        pairs += [(members_a[a], members_b[b]) for a, b in kept]
    return pairs


Item = TypeVar("Item")


def _kept_where(left: Sequence[Item], right: Sequence[Item], same: Callable[[Item, Item], bool]) -> list[tuple[int, int]]:
    """The index pairs a sequence diff of ``left`` and ``right`` keeps, ``same`` deciding equality."""
    return kept_pairs(diff_sequences(len(left), len(right), lambda i, j: same(left[i], right[j]), lambda i, j: 0.0))


def _longest_chain(pairs: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The longest subsequence of ``pairs`` (sorted by A index) increasing in both indices."""
    pairs = sorted(pairs)
    tails: list[int] = []  # tails[k]: index into pairs of the smallest B end of a chain of length k+1
    tail_values: list[int] = []
    previous = [-1] * len(pairs)
    for index, (_, j) in enumerate(pairs):
        k = bisect.bisect_left(tail_values, j)
        if k > 0:
            previous[index] = tails[k - 1]
        if k == len(tails):
            tails.append(index)
            tail_values.append(j)
        else:
            tails[k] = index
            tail_values[k] = j
    chain = []
    index = tails[-1] if tails else -1
    while index >= 0:
        chain.append(pairs[index])
        index = previous[index]
    chain.reverse()
    # equal A indices cannot occur (one partner each); equal B indices are excluded by bisect_left
    return chain


def _resized(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    """Shapes that differ only past the batch and channel axes: the same layer seeing a spatial size
    that a divergence upstream changed (a pooling's ``ceil_mode``)."""
    return len(a) == len(b) > 2 and a[:2] == b[:2]


def _same_place(a: CallInfo, b: CallInfo) -> bool:
    """Two calls left alone between the same neighbours compute the same step of the model where
    they take and give tensors of the same sizes, whatever their families and values say (a max
    pool ported as an average pool), or are of one family (a pooling whose ``ceil_mode`` changed
    its output size)."""
    same_input = a.input is not None and b.input is not None and a.input.count is not None and a.input.count == b.input.count
    same_output = (
        a.output is not None and b.output is not None and a.output.count is not None and a.output.count == b.output.count
    )
    return (same_input and same_output) or families_compatible(a.family, b.family)


def _align_gap(seq_a: Sequence[CallInfo], seq_b: Sequence[CallInfo], rows: list[int], cols: list[int]) -> list[tuple[int, int]]:
    """Pairs between ``rows`` of A and ``cols`` of B maximising total similarity, in order."""
    if not rows or not cols:
        return []

    def score(i: int, j: int) -> float:
        value = similarity(seq_a[i], seq_b[j])
        return value if value >= MIN_SIMILARITY else 0.0

    ops = pair_block(rows, cols, score, max_cells=DP_CELLS)
    return [(op.a, op.b) for op in ops if op.a is not None and op.b is not None]


def _fold(
    seq_a: Sequence[CallInfo],
    seq_b: Sequence[CallInfo],
    pairs: list[tuple[int, int]],
    methods: dict[tuple[int, int], str],
    earlier: Sequence[Pairing] = (),
) -> list[Pairing]:
    """Turn pairs into pairings, growing a pair into a fused group where its neighbours fold into it
    (never into a member of ``earlier`` pairings)."""
    matched_a = {i for i, _ in pairs} | {i for p in earlier for i in p.a}
    matched_b = {j for _, j in pairs} | {j for p in earlier for j in p.b}
    result = []
    for i, j in pairs:
        group_a, group_b = [i], [j]
        for seq, group, matched, partner in ((seq_a, group_a, matched_a, seq_b[j]), (seq_b, group_b, matched_b, seq_a[i])):
            # the pair matched the folded op (a batch norm) with the call that absorbed it: add the
            # call it was folded into, just before it
            before = group[0] - 1
            if before >= 0 and before not in matched and _absorbs(seq[before], seq[before], seq[group[0]], partner):
                group.insert(0, before)
                matched.add(before)
            # the pair matched the call that absorbed the ops right after it
            after = group[-1] + 1
            while after < len(seq) and after not in matched and _absorbs(seq[group[0]], seq[group[-1]], seq[after], partner):
                group.append(after)
                matched.add(after)
                after += 1
        method = "fused" if len(group_a) > 1 or len(group_b) > 1 else methods.get((i, j), "dataflow")
        same_layer = all(
            seq[k].family in PASS_THROUGH_FAMILIES for seq, group in ((seq_a, group_a), (seq_b, group_b)) for k in group[1:]
        )
        result.append(Pairing(tuple(group_a), tuple(group_b), method, same_layer))
    return result


def _absorbs(core: CallInfo, last: CallInfo, folded: CallInfo, fused: CallInfo) -> bool:
    """Does ``fused`` (one call on the other side) compute ``core`` .. ``last`` followed by ``folded``?

    ``core`` is the member of the family ``fused`` has (the Conv); ``folded`` must be of a family that
    folds (a batch norm after a Conv or Linear; a pass-through after anything), and where the tables
    hold values, ``fused``'s output must be at least as close to ``folded``'s as to ``last``'s.
    """
    if folded.family not in FOLDABLE_FAMILIES or not families_compatible(core.family, fused.family):
        return False
    if folded.family == "batchnorm" and core.family not in FOLDS_INTO:
        return False
    if (
        folded.output is not None
        and fused.output is not None
        and folded.output.shape is not None
        and fused.output.shape is not None
        and folded.output.shape != fused.output.shape
        and not _resized(folded.output.shape, fused.output.shape)
    ):
        return False  # the group's boundary would not be the partner's (a Flatten after a pool)
    to_last = value_distance(last.output, fused.output)
    to_folded = value_distance(folded.output, fused.output)
    if to_last is None or to_folded is None or to_folded <= to_last:
        return True  # the values agree, or cannot say: the family rule alone
    # closer to the call before the fold: that is what the partner computes, unless it differs from
    # both (a divergence inside the fused op), where the family rule decides again
    return to_last > FOLD_EVIDENCE


def align_call_sequences(
    seq_a: Sequence[CallInfo],
    seq_b: Sequence[CallInfo],
    anchors: Iterable[tuple[int, int, str]] = (),
) -> list[Pairing]:
    """Align two leaf-call sequences (see the module docstring). ``anchors`` are (i, j, method)
    pairs fixed beforehand (layer map, equal routes): all are kept, and the longest chain of them
    in order on both sides bounds the gaps."""
    given = {(i, j): method for i, j, method in anchors}
    fixed_a, fixed_b = {i for i, _ in given}, {j for _, j in given}
    chain = _longest_chain(list(given))
    chain_a = [i for i, _ in chain]
    chain_b = [j for _, j in chain]

    def between_given(i: int, j: int) -> bool:
        k = bisect.bisect_left(chain_a, i)
        low_ok = k == 0 or chain_b[k - 1] < j
        high_ok = k == len(chain_a) or j < chain_b[k]
        return low_ok and high_ok

    values = [p for p in _value_anchors(seq_a, seq_b, fixed_a, fixed_b) if between_given(*p)]
    anchored = _longest_chain(sorted(chain + _longest_chain(values)))
    in_chain = set(anchored)
    # A value anchor off the chain pairs two calls that run in another order on each side (the
    # keys projected before the queries): its values say more than the gap's order would.
    crossing = [p for p in values if p not in in_chain]
    pairs: list[tuple[int, int]] = [p for p in given if p not in in_chain] + crossing
    taken_a = fixed_a | {i for i, _ in crossing}
    taken_b = fixed_b | {j for _, j in crossing}
    previous = (-1, -1)
    for i, j in [*anchored, (len(seq_a), len(seq_b))]:
        rows = [k for k in range(previous[0] + 1, i) if k not in taken_a]
        cols = [k for k in range(previous[1] + 1, j) if k not in taken_b]
        pairs += _align_gap(seq_a, seq_b, rows, cols)
        if i < len(seq_a):
            pairs.append((i, j))
        previous = (i, j)
    found = _fold(seq_a, seq_b, sorted(pairs), given)
    # what folding left: runs between consecutive groups paired by family, then branches computed
    # in another order (a residual shortcut before or after the main path) paired by their values
    bounds = sorted((i, j) for p in found for i in p.a for j in p.b)
    more = _lone_pairs(seq_a, seq_b, bounds)
    taken_a = {i for p in found for i in p.a} | {i for i, _ in more}
    taken_b = {j for p in found for j in p.b} | {j for _, j in more}
    more += _value_anchors(seq_a, seq_b, taken_a, taken_b)
    return sorted(found + _fold(seq_a, seq_b, sorted(more), given, found), key=lambda p: p.a)


def _within(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    """Is one sorted multiset of sizes contained in the other?"""
    small, large = (list(a), list(b)) if len(a) <= len(b) else (list(b), list(a))
    for size in small:
        if size not in large:
            return False
        large.remove(size)
    return True


def _lone_pairs(seq_a: Sequence[CallInfo], seq_b: Sequence[CallInfo], pairs: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Pair by family, in order, the calls left between two consecutive pairs.

    Past a divergence that changes sizes (a pooling's ``ceil_mode``) and values, similarity has
    little to go on; but the calls left on each side, once the batch norms folded on one side are
    set aside, are the same layers where their families follow in the same order: the longest
    common subsequence of families pairs them (a residual ``Add`` recorded on one side only stays
    out). One call left on each side pairs up where :func:`_same_place`. What is set aside is
    folded by :func:`_fold` afterwards.
    """
    found = []
    bounds = [(-1, -1), *sorted(pairs), (len(seq_a), len(seq_b))]
    for (i0, j0), (i1, j1) in itertools.pairwise(bounds):
        rows, cols = list(range(i0 + 1, i1)), list(range(j0 + 1, j1))
        if not rows or not cols:
            continue
        if len(rows) == len(cols) == 1 and _same_place(seq_a[rows[0]], seq_b[cols[0]]):
            found.append((rows[0], cols[0]))
            continue
        rows, cols = _unfolded(seq_a, rows, seq_b, cols), _unfolded(seq_b, cols, seq_a, rows)
        kept = _kept_where([seq_a[i] for i in rows], [seq_b[j] for j in cols], _alike)
        found += [(rows[a], cols[b]) for a, b in kept]
    return found


def _alike(a: CallInfo, b: CallInfo) -> bool:
    """One family, and outputs of one rank (their sizes may differ past a divergence)."""
    if a.family != b.family:
        return False
    if a.output is None or b.output is None or a.output.shape is None or b.output.shape is None:
        return True
    return len(a.output.shape) == len(b.output.shape)


def _unfolded(seq: Sequence[CallInfo], run: list[int], other: Sequence[CallInfo], other_run: list[int]) -> list[int]:
    """``run`` without the batch norms that follow a layer they fold into, where ``other_run`` has
    no batch norm (the other side's exporter folded them)."""
    if any(other[k].family == "batchnorm" for k in other_run):
        return run
    return [k for n, k in enumerate(run) if not (seq[k].family == "batchnorm" and n > 0 and seq[run[n - 1]].family in FOLDS_INTO)]
