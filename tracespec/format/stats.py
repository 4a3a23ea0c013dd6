"""Statistics and content hashes of tensors (spec section "Statistics and hashes").

This is the reference implementation: adapters may compute the same numbers faster on a device,
and their tests compare against these functions.

- Statistics are computed in float64 over the finite elements; NaN and Inf are only counted.
  Complex tensors are summarised by their modulus; bool and integers as numbers.
  ``std`` is the population standard deviation. With no finite element, the five moments are null.
- The content hash is ``"xxh3_128:" + 32 hex digits`` of the tensor's bytes in C order, little
  endian (bfloat16 and float8 as their raw bits).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from itertools import repeat
from typing import Final

import numpy as np
import xxhash

__all__ = ["HASH_ALGORITHM", "TensorStats", "combine_stats", "compute_stats", "content_hash", "scratch_block"]

HASH_ALGORITHM: Final = "xxh3_128"

# Elements per block: the float64 work buffer (2 MiB) stays in the CPU cache, so the several
# passes over each block cost little, and memory stays bounded whatever the tensor size.
_BLOCK: Final = 1 << 18
# Consecutive blocks one thread summarises per task when ``threads`` > 1.
_BLOCKS_PER_TASK: Final = 8


@dataclass(frozen=True, slots=True)
class TensorStats:
    """The float64 statistics of one tensor; the moments are None without finite elements."""

    count: int
    min: float | None
    max: float | None
    mean: float | None
    std: float | None
    l2: float | None
    nan_count: int
    inf_count: int

    def to_json(self) -> dict[str, float | int | None]:
        return {
            "count": self.count,
            "min": self.min,
            "max": self.max,
            "mean": self.mean,
            "std": self.std,
            "l2": self.l2,
            "nan_count": self.nan_count,
            "inf_count": self.inf_count,
        }


@dataclass(frozen=True, slots=True)
class _Block:
    """The moments of one block's finite values, and its NaN and Inf counts."""

    finite: int
    mean: float
    m2: float  # sum of squared deviations from the block mean
    low: float
    high: float
    nan: int
    inf: int


@dataclass(slots=True)
class _Moments:
    finite: int = 0
    mean: float = 0.0
    m2: float = 0.0  # sum of squared deviations from the mean (Chan et al.)
    sumsq: float = 0.0
    low: float = math.inf
    high: float = -math.inf
    nan: int = 0
    inf: int = 0

    def add(self, block: _Block) -> None:
        self.nan += block.nan
        self.inf += block.inf
        if block.finite:
            # sum(x^2) = sum((x - mean)^2) + n mean^2: two non-negative terms, no cancellation.
            sumsq = block.m2 + block.finite * block.mean * block.mean
            self.merge(block.finite, block.mean, block.m2, sumsq, block.low, block.high)

    def merge(self, n: int, mean: float, m2: float, sumsq: float, low: float, high: float) -> None:
        total = self.finite + n
        delta = mean - self.mean
        self.mean += delta * n / total
        self.m2 += m2 + delta * delta * self.finite * n / total
        self.finite = total
        self.sumsq += sumsq
        self.low = min(self.low, low)
        self.high = max(self.high, high)


def _summarize_block(block: np.ndarray, scratch: np.ndarray) -> _Block:
    values = _to_float64(block, scratch)
    total = float(np.add.reduce(values))
    all_finite = math.isfinite(total)
    nan = inf = 0
    if not all_finite:  # NaN and Inf propagate into the sum: count and drop them
        finite_mask = np.isfinite(values)
        nan = int(np.count_nonzero(np.isnan(values)))
        inf = values.size - int(np.count_nonzero(finite_mask)) - nan
        values = values[finite_mask]
        total = float(np.add.reduce(values))
    n = values.size
    if n == 0:
        return _Block(0, 0.0, 0.0, math.inf, -math.inf, nan, inf)
    # min/max of the narrower original when numpy has fast loops for it (same values)
    native = all_finite and block.dtype.kind in _NATIVE_EXTREMES_KINDS and block.dtype.itemsize >= 4
    extremes = block if native else values
    low, high = float(extremes.min()), float(extremes.max())
    mean = total / n
    np.subtract(values, mean, out=values)
    # square and sum in place, not np.dot: BLAS threads stall on a busy machine
    np.multiply(values, values, out=values)
    return _Block(n, mean, float(np.add.reduce(values)), low, high, nan, inf)


def _summarize_blocks(flat: np.ndarray, starts: Sequence[int]) -> list[_Block]:
    scratch = scratch_block()
    # errstate is per thread: huge float64 inputs may overflow a sum, sNaNs flag "invalid"
    with np.errstate(over="ignore", invalid="ignore"):
        return [_summarize_block(flat[start : start + _BLOCK], scratch) for start in starts]


_NATIVE_EXTREMES_KINDS: Final = "fiu"


@cache
def _float32_table(dtype: np.dtype) -> np.ndarray:
    """The float32 value of each of the 256 bit patterns of a one-byte float type."""
    return np.arange(256, dtype=np.uint8).view(dtype).astype(np.float32)


def _to_float64(block: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Copy ``block``'s values into ``out`` as float64, exactly (every supported type fits)."""
    out = out[: block.size]
    if block.dtype.kind == "c":
        np.abs(block, out=out, dtype=np.float64)
    elif block.dtype.itemsize == 1 and block.dtype.kind not in "biu":
        # float8 types: a 256-entry table is three times faster than ml_dtypes' cast.
        np.copyto(out, _float32_table(block.dtype)[block.view(np.uint8)])
    else:
        np.copyto(out, block, casting="unsafe")
    return out


def compute_stats(array: np.ndarray, *, threads: int = 1) -> TensorStats:
    """Statistics of ``array`` in float64, blockwise so memory stays bounded.

    ``threads`` > 1 summarises blocks in parallel (numpy releases the GIL); blocks are merged in
    the same order either way, so the result is bit-identical whatever ``threads`` is.
    """
    flat = np.asarray(array).reshape(-1)
    starts = range(0, flat.size, _BLOCK)
    moments = _Moments()
    if threads <= 1 or len(starts) < 2 * threads:
        for block in _summarize_blocks(flat, starts):
            moments.add(block)
        return _finish(flat.size, moments)
    per_round = threads * _BLOCKS_PER_TASK
    with ThreadPoolExecutor(threads, thread_name_prefix="tracespec-stats") as pool:
        for first in range(0, len(starts), per_round):
            batch = starts[first : first + per_round]
            tasks = [batch[i * _BLOCKS_PER_TASK : (i + 1) * _BLOCKS_PER_TASK] for i in range(threads)]
            for summaries in pool.map(_summarize_blocks, repeat(flat), tasks):
                for block in summaries:
                    moments.add(block)
    return _finish(flat.size, moments)


_scratch = threading.local()


def scratch_block() -> np.ndarray:
    """This thread's float64 work block (``_BLOCK`` elements), allocated once: a fresh one per
    tensor costs a page fault per 4 KiB, as much as the statistics themselves. Adapters' fast
    statistics use it too."""
    block = getattr(_scratch, "block", None)
    if block is None:
        block = _scratch.block = np.empty(_BLOCK)
    return block


def combine_stats(parts: list[TensorStats]) -> TensorStats:
    """The statistics of the concatenation of tensors whose statistics are ``parts``."""
    moments = _Moments()
    for part in parts:
        moments.nan += part.nan_count
        moments.inf += part.inf_count
        finite = part.count - part.nan_count - part.inf_count
        if finite and part.mean is not None:
            assert part.std is not None and part.l2 is not None
            assert part.min is not None and part.max is not None
            moments.merge(finite, part.mean, part.std**2 * finite, part.l2**2, part.min, part.max)
    return _finish(sum(p.count for p in parts), moments)


def _finish(count: int, m: _Moments) -> TensorStats:
    if m.finite == 0:
        return TensorStats(count, None, None, None, None, None, m.nan, m.inf)
    return TensorStats(
        count=count,
        min=m.low,
        max=m.high,
        mean=m.mean,
        std=math.sqrt(max(m.m2, 0.0) / m.finite),
        l2=math.sqrt(m.sumsq),
        nan_count=m.nan,
        inf_count=m.inf,
    )


def content_hash(array: np.ndarray) -> str:
    """``xxh3_128:<hex>`` of the C-order little-endian bytes of ``array``."""
    contiguous = np.ascontiguousarray(array)
    if contiguous.dtype.byteorder == ">":
        contiguous = contiguous.astype(contiguous.dtype.newbyteorder("<"))
    return f"{HASH_ALGORITHM}:{xxhash.xxh3_128_hexdigest(contiguous.reshape(-1).view(np.uint8).data)}"
