"""How far apart two tensors are, in float64, streamed block by block.

Constraints: numpy only; work memory is a few blocks of :data:`BLOCK` float64 elements whatever the
tensor size (the two tensors themselves are the only whole-size objects). A is the reference.

- Elementwise metrics (both sides kept data): max abs error, max rel error (over elements where
  ``a != 0``), mean abs error, RMSE, cosine similarity, SQNR (dB), ULP distance in the stored dtype
  (the coarser of the two), NaN/Inf position agreement, and the elements beyond tolerance.
  Only elements finite on both sides enter the error metrics.
- Statistics metrics (one side kept statistics only): differences of mean, std, min, max, L2 and
  NaN/Inf counts.
- Hash metrics (one side kept only the content hash): equal or not.

Non-finite results are reported as ``None`` in JSON (``sqnr_db`` of identical tensors is infinite).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np

from tracespec.compare.tolerance import ELEMENT_SLACK, Tolerance, coarser_dtype
from tracespec.errors import UnsupportedDtypeError
from tracespec.format.dtypes import dtype_of, parse_dtype
from tracespec.format.stats import TensorStats

__all__ = [
    "BLOCK",
    "Metrics",
    "RangeSums",
    "compare_arrays",
    "compare_hashes",
    "compare_stats",
    "fold_ranges",
    "identical_arrays",
    "judge",
    "measure_range",
]

BLOCK: Final = 1 << 18
"""Elements per block: 2 MiB of float64 per temporary, small enough to stay in cache."""


def _block_threads() -> int:
    """Up to 4 and the cores, and no more than ``OMP_NUM_THREADS`` says where it is set: the
    numeric threads a process is told to keep to (a Dask worker is told 1, so that N workers with
    one thread each use N cores, not N times all of them)."""
    told = os.environ.get("OMP_NUM_THREADS", "")
    return min(4, os.cpu_count() or 1, int(told) if told.isdigit() and int(told) > 0 else 4)


WORKERS: Final = _block_threads()
"""Threads comparing the blocks of one large tensor (work memory grows by a few blocks each)."""


def _finite_or_none(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return float(value)


@dataclass(frozen=True, slots=True)
class Metrics:
    """The evidence of one comparison. ``kind`` is ``elementwise``, ``stats``, ``hash`` or ``none``."""

    kind: str
    identical: bool
    count: int = 0
    max_abs: float | None = None
    max_rel: float | None = None
    mean_abs: float | None = None
    rmse: float | None = None
    cosine: float | None = None
    sqnr_db: float | None = None
    max_ulp: float | None = None
    ulp_dtype: str | None = None
    nan_agree: bool = True
    inf_agree: bool = True
    mismatched: int | None = None
    tolerance_ratio: float | None = None
    reference_rms: float | None = None
    reference_mean_abs: float | None = None
    worst_index: list[int] | None = None
    worst_a: float | None = None
    worst_b: float | None = None
    stats_delta: dict[str, float | None] = field(default_factory=dict)
    note: str | None = None

    @property
    def rel_rmse(self) -> float | None:
        """RMSE relative to the reference's RMS: a scale-free error, used for error growth."""
        if self.rmse is None:
            return None
        if self.rmse == 0:
            return 0.0
        if not self.reference_rms:
            return None
        return self.rmse / self.reference_rms

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"kind": self.kind, "identical": self.identical}
        if self.kind == "elementwise":
            doc.update(
                count=self.count,
                max_abs=_finite_or_none(self.max_abs),
                max_rel=_finite_or_none(self.max_rel),
                mean_abs=_finite_or_none(self.mean_abs),
                rmse=_finite_or_none(self.rmse),
                rel_rmse=_finite_or_none(self.rel_rmse),
                cosine=_finite_or_none(self.cosine),
                sqnr_db=_finite_or_none(self.sqnr_db),
                max_ulp=_finite_or_none(self.max_ulp),
                ulp_dtype=self.ulp_dtype,
                nan_agree=self.nan_agree,
                inf_agree=self.inf_agree,
                mismatched=self.mismatched,
                tolerance_ratio=_finite_or_none(self.tolerance_ratio),
                worst_index=self.worst_index,
                worst_a=_finite_or_none(self.worst_a),
                worst_b=_finite_or_none(self.worst_b),
            )
        elif self.kind == "stats":
            doc.update(
                count=self.count,
                tolerance_ratio=_finite_or_none(self.tolerance_ratio),
                nan_agree=self.nan_agree,
                inf_agree=self.inf_agree,
                stats_delta={k: _finite_or_none(v) for k, v in self.stats_delta.items()},
            )
        if self.note:
            doc["note"] = self.note
        return doc


def identical_arrays(a: np.ndarray, b: np.ndarray) -> bool:
    """True when ``a`` and ``b`` have the same dtype, shape and bytes (compared block by block)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    flat_a = np.ascontiguousarray(a).reshape(-1).view(np.uint8)
    flat_b = np.ascontiguousarray(b).reshape(-1).view(np.uint8)
    step = BLOCK * 8
    return all(
        np.array_equal(flat_a[start : start + step], flat_b[start : start + step]) for start in range(0, flat_a.size, step)
    )


def _ordered_bits(block: np.ndarray) -> np.ndarray:
    """Float bits as integers whose differences count representable values (ULPs): the
    sign-magnitude bit pattern turned into two's complement (-0.0 and +0.0 both map to 0)."""
    width = block.dtype.itemsize * 8
    signed = block.view(f"i{block.dtype.itemsize}")
    sign = signed >> (width - 1)  # -1 for negative values, 0 otherwise
    ordered = signed ^ (sign & np.array((1 << (width - 1)) - 1, signed.dtype))
    ordered -= sign
    # differences of two width-bit integers need width + 1 bits
    widened: np.ndarray = ordered.astype(np.float64 if width == 64 else np.int64)
    return widened


def _float_name(dtype: np.dtype) -> str | None:
    try:
        found = dtype_of(np.empty(0, dtype))
    except UnsupportedDtypeError:
        return None
    return found.name if found.is_float else None


def _ulp_dtype(dtype_a: np.dtype, dtype_b: np.dtype) -> str | None:
    """The dtype whose ULPs measure the distance: the coarser float of the two, None if not floats."""
    name_a, name_b = _float_name(dtype_a), _float_name(dtype_b)
    if name_a is None or name_b is None:
        return None
    return coarser_dtype(name_a, name_b)


class _Accumulator:
    """Running sums of one elementwise comparison."""

    def __init__(self, tolerance: Tolerance, reference_rms: float | None) -> None:
        self.rtol = tolerance.rtol
        self.atol = tolerance.atol_for(reference_rms)
        self.count = self.finite = self.mismatched = 0
        self.max_abs = self.max_rel = self.max_ulp = 0.0
        self.sum_abs = self.sum_sq = self.sum_abs_a = 0.0
        self.aa = self.bb = self.ab = 0.0
        self.worst_ratio = -1.0
        self.worst: tuple[int, float, float] | None = None
        self.nan_agree = self.inf_agree = True

    def merge(self, other: _Accumulator) -> None:
        """Fold in the sums of the next blocks (``other`` covers elements after this one's)."""
        self.count += other.count
        self.finite += other.finite
        self.mismatched += other.mismatched
        self.max_abs = max(self.max_abs, other.max_abs)
        self.max_rel = max(self.max_rel, other.max_rel)
        self.max_ulp = max(self.max_ulp, other.max_ulp)
        self.sum_abs += other.sum_abs
        self.sum_sq += other.sum_sq
        self.sum_abs_a += other.sum_abs_a
        self.aa += other.aa
        self.bb += other.bb
        self.ab += other.ab
        if other.worst_ratio > self.worst_ratio:  # the earliest element wins ties, as in one pass
            self.worst_ratio, self.worst = other.worst_ratio, other.worst
        self.nan_agree &= other.nan_agree
        self.inf_agree &= other.inf_agree

    def add(self, start: int, block_a: np.ndarray, block_b: np.ndarray, ulp_dtype: np.dtype | None) -> None:
        """Fold one block (flat views of A and B at element offset ``start``) into the sums.

        Written for few passes over memory: temporaries are reused, and the NaN/Inf masks are
        built only when a sum of squares says a block holds a non-finite value.
        """
        self.count += block_a.size
        a = block_a.astype(np.float64)
        b = block_b.astype(np.float64)
        index = None
        aa, bb = float(np.einsum("i,i->", a, a)), float(np.einsum("i,i->", b, b))
        if not (math.isfinite(aa) and math.isfinite(bb)):
            finite_a, finite_b = np.isfinite(a), np.isfinite(b)
            self.nan_agree &= bool(np.array_equal(np.isnan(a), np.isnan(b)))
            inf_a = np.where(np.isinf(a), np.sign(a), 0)
            inf_b = np.where(np.isinf(b), np.sign(b), 0)
            self.inf_agree &= bool(np.array_equal(inf_a, inf_b))
            both = finite_a & finite_b
            if not both.all():
                index = np.flatnonzero(both)
                a, b = a[both], b[both]
                block_a, block_b = block_a[both], block_b[both]
            with np.errstate(over="ignore"):
                aa, bb = float(np.einsum("i,i->", a, a)), float(np.einsum("i,i->", b, b))
        if a.size == 0:
            return
        self.finite += a.size
        self.aa += aa
        self.bb += bb
        self.ab += float(np.einsum("i,i->", a, b))
        diff = np.subtract(b, a, out=b)  # b is not needed any more
        self.sum_sq += float(np.einsum("i,i->", diff, diff))
        abs_diff = np.abs(diff, out=diff)
        self.sum_abs += float(abs_diff.sum())
        block_max = float(abs_diff.max())
        abs_a = np.abs(a)
        self.sum_abs_a += float(abs_a.sum())
        if block_max == 0.0:
            return
        self.max_abs = max(self.max_abs, block_max)
        work = np.multiply(abs_a, self.rtol)
        work += self.atol
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.divide(abs_diff, work, out=work)
            if self.atol == 0.0:
                ratio[abs_diff == 0] = 0.0
            worst = int(np.argmax(ratio))
            worst_ratio = float(ratio[worst])
            if worst_ratio > 1.0:
                self.mismatched += int(np.count_nonzero(ratio > 1.0))
            if worst_ratio > self.worst_ratio:
                self.worst_ratio = worst_ratio
                position = start + (int(index[worst]) if index is not None else worst)
                self.worst = (position, float(block_a[worst]), float(block_b[worst]))
            rel = np.divide(abs_diff, abs_a, out=ratio)
            rel[abs_a == 0] = 0.0
        self.max_rel = max(self.max_rel, float(rel.max()))
        if ulp_dtype is not None:
            ulps = np.abs(
                _ordered_bits(block_a.astype(ulp_dtype, copy=False)) - _ordered_bits(block_b.astype(ulp_dtype, copy=False))
            )
            self.max_ulp = max(self.max_ulp, float(ulps.max()))

    def finish(self, shape: tuple[int, ...], ulp_dtype: str | None, reference_rms: float | None) -> Metrics:
        n = self.finite
        if self.aa and self.bb:
            cosine = self.ab / math.sqrt(self.aa * self.bb)
        else:
            cosine = 1.0 if self.aa == self.bb else 0.0
        sqnr = math.inf if self.sum_sq == 0 else (10 * math.log10(self.aa / self.sum_sq) if self.aa else -math.inf)
        worst_index = None
        if self.worst is not None and shape:
            worst_index = [int(i) for i in np.unravel_index(self.worst[0], shape)]
        rms = reference_rms if reference_rms is not None else (math.sqrt(self.aa / n) if n else None)
        return Metrics(
            kind="elementwise",
            identical=False,
            count=self.count,
            max_abs=self.max_abs,
            max_rel=self.max_rel,
            mean_abs=self.sum_abs / n if n else 0.0,
            rmse=math.sqrt(self.sum_sq / n) if n else 0.0,
            cosine=cosine,
            sqnr_db=sqnr,
            max_ulp=self.max_ulp if ulp_dtype is not None else None,
            ulp_dtype=ulp_dtype,
            nan_agree=self.nan_agree,
            inf_agree=self.inf_agree,
            mismatched=self.mismatched,
            tolerance_ratio=max(self.worst_ratio, 0.0),
            reference_rms=rms,
            reference_mean_abs=self.sum_abs_a / n if n else 0.0,
            worst_index=worst_index,
            worst_a=self.worst[1] if self.worst else None,
            worst_b=self.worst[2] if self.worst else None,
        )


@dataclass(frozen=True, slots=True)
class RangeSums:
    """What the elements ``start`` to ``stop`` (flat, in C order) of a tensor pair came to: whether
    their bytes agree, and the sums of each of their blocks in order (None where the bytes agree and
    the sums were not asked for). Ranges start on a block boundary, so that the blocks of any split
    of a tensor are the blocks of the tensor whole (:func:`fold_ranges`)."""

    start: int
    stop: int
    identical: bool
    blocks: tuple[_Accumulator, ...] | None


def _measured_dtype(dtype: np.dtype) -> np.dtype:
    """The dtype whose values are compared: a complex tensor's modulus (like the statistics)."""
    return np.empty(0, dtype).real.dtype if dtype.kind == "c" else dtype


def measure_range(
    a: np.ndarray,
    b: np.ndarray,
    start: int,
    tolerance: Tolerance,
    reference_rms: float | None = None,
    *,
    sums_if_identical: bool = True,
) -> RangeSums:
    """The sums of each block of ``a`` and ``b``, flat views of the elements from ``start`` on (a
    multiple of :data:`BLOCK`) of the reference and the other tensor; where their bytes agree and
    ``sums_if_identical`` is False, no sums (a tensor identical whole needs none)."""
    if start % BLOCK or a.ndim != 1 or b.ndim != 1 or a.size != b.size:
        raise ValueError(
            f"a range starts on a block boundary and holds as many elements of A as of B: {start}, {a.shape}, {b.shape}"
        )
    stop = start + int(a.size)
    identical = identical_arrays(a, b)
    if identical and not sums_if_identical:
        return RangeSums(start, stop, True, None)
    if a.dtype.kind == "c" or b.dtype.kind == "c":
        a, b = np.abs(a), np.abs(b)
    ulp_dtype = _ulp_dtype(a.dtype, b.dtype)
    ulp_numpy = parse_dtype(ulp_dtype).numpy if ulp_dtype is not None else None

    def one_block(offset: int) -> _Accumulator:
        block = _Accumulator(tolerance, reference_rms)
        block.add(start + offset, a[offset : offset + BLOCK], b[offset : offset + BLOCK], ulp_numpy)
        return block

    offsets = range(0, a.size, BLOCK)
    # Blocks are independent, so any number of threads finds the same sums (numpy releases the
    # GIL in its loops); threads only pay off on large tensors.
    if len(offsets) >= 4 and WORKERS > 1:
        with ThreadPoolExecutor(WORKERS) as pool:
            blocks = tuple(pool.map(one_block, offsets))
    else:
        blocks = tuple(one_block(offset) for offset in offsets)
    return RangeSums(start, stop, identical, blocks)


def fold_ranges(
    ranges: Sequence[RangeSums],
    shape: tuple[int, ...],
    dtype_a: np.dtype,
    dtype_b: np.dtype,
    tolerance: Tolerance,
    reference_rms: float | None = None,
) -> Metrics:
    """The metrics of a tensor pair of ``shape`` from the sums of its ranges (every element once, in
    order): its blocks' sums folded one after the other, in the order one pass over the tensor folds
    them, so that any split gives the bits of one pass (floating-point sums depend on their order)."""
    size, covered = math.prod(shape), 0
    for part in ranges:
        if part.start != covered:
            break
        covered = part.stop
    if covered != size:
        raise ValueError(f"the ranges {[(r.start, r.stop) for r in ranges]} do not cover {size} elements in order")
    if all(r.identical for r in ranges):
        return Metrics(
            kind="elementwise",
            identical=True,
            count=size,
            max_abs=0.0,
            max_rel=0.0,
            mean_abs=0.0,
            rmse=0.0,
            cosine=1.0,
            sqnr_db=math.inf,
            max_ulp=0.0,
            mismatched=0,
            tolerance_ratio=0.0,
            reference_rms=reference_rms,
        )
    acc = _Accumulator(tolerance, reference_rms)
    for part in ranges:
        if part.blocks is None:
            raise ValueError(f"elements {part.start} to {part.stop} were measured without their sums")
        for block in part.blocks:
            acc.merge(block)
    ulp_dtype = _ulp_dtype(_measured_dtype(dtype_a), _measured_dtype(dtype_b))
    return acc.finish(shape, ulp_dtype, reference_rms)


def compare_arrays(a: np.ndarray, b: np.ndarray, tolerance: Tolerance, reference_rms: float | None = None) -> Metrics:
    """Elementwise metrics of ``b`` against the reference ``a`` (same shape): the tensors whole as
    one range (:func:`measure_range`, :func:`fold_ranges`)."""
    flat_a = np.ascontiguousarray(a).reshape(-1)
    flat_b = np.ascontiguousarray(b).reshape(-1)
    whole = measure_range(flat_a, flat_b, 0, tolerance, reference_rms, sums_if_identical=False)
    return fold_ranges([whole], tuple(a.shape), a.dtype, b.dtype, tolerance, reference_rms)


def _rms(stats: TensorStats) -> float | None:
    finite = stats.count - stats.nan_count - stats.inf_count
    if stats.l2 is None or finite <= 0:
        return None
    return stats.l2 / math.sqrt(finite)


def compare_stats(a: TensorStats, b: TensorStats, tolerance: Tolerance, reference_rms: float | None = None) -> Metrics:
    """Compare what two statistics records say: each moment within tolerance, same NaN/Inf counts."""
    delta: dict[str, float | None] = {}
    ratio = 0.0
    atol = tolerance.atol_for(reference_rms if reference_rms is not None else _rms(a))
    for name in ("mean", "std", "min", "max", "l2"):
        va, vb = getattr(a, name), getattr(b, name)
        if va is None or vb is None:
            delta[name] = None if va is None and vb is None else math.inf
            if va is not vb:
                ratio = math.inf
            continue
        delta[name] = vb - va
        bound = atol + tolerance.rtol * abs(va)
        if name == "l2":  # a norm over n elements: scale the absolute part like the norm does
            bound = atol * math.sqrt(max(a.count, 1)) + tolerance.rtol * abs(va)
        if vb != va:
            ratio = max(ratio, abs(vb - va) / bound if bound > 0 else math.inf)
    identical = ratio == 0.0 and a.nan_count == b.nan_count and a.inf_count == b.inf_count
    return Metrics(
        kind="stats",
        identical=identical,
        count=a.count,
        tolerance_ratio=ratio,
        nan_agree=a.nan_count == b.nan_count,
        inf_agree=a.inf_count == b.inf_count,
        reference_rms=_rms(a),
        stats_delta=delta,
        note="compared by statistics only (data not kept, or --mode stats)",
    )


def compare_hashes(a: str, b: str) -> Metrics:
    """Bitwise comparison by content hash (all a hash-only record allows)."""
    same = a == b
    return Metrics(kind="hash", identical=same, note=None if same else "content hashes differ: not bitwise identical")


def judge(metrics: Metrics, mode: str, tolerance: Tolerance) -> str:
    """A record pair's status from its metrics under ``mode`` and ``tolerance`` (spec section 6)."""
    if metrics.identical:
        return "pass"
    if metrics.kind == "hash":
        return "diverged"
    agree = metrics.nan_agree and metrics.inf_agree
    if metrics.kind == "stats":
        within = metrics.tolerance_ratio is not None and metrics.tolerance_ratio <= 1.0
    elif mode == "mean":
        bound = tolerance.atol_for(metrics.reference_rms) + tolerance.rtol * (metrics.reference_mean_abs or 0.0)
        within = (metrics.mean_abs or 0.0) <= bound
    elif mode == "norm":
        within = (metrics.rel_rmse or 0.0) <= tolerance.rel_rmse and (metrics.tolerance_ratio or 0.0) <= ELEMENT_SLACK
    else:
        within = metrics.mismatched == 0
    return "pass_within_tolerance" if within and agree else "diverged"
