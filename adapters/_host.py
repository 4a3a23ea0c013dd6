"""Host memory: statistics of host arrays computed without a copy, and the reused buffers of
``full`` copies."""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Hashable
from typing import Final

import numpy as np

from tracespec.format.stats import TensorStats, compute_stats, scratch_block

__all__ = ["HostBufferPool", "fast_stats", "stats_from_sums"]

# Above this ratio of n * mean^2 to the sum of squared deviations, the one-pass variance loses
# digits to cancellation: the exact reference takes over.
_CANCELLATION_RATIO: Final = 1e4
_FAST_KINDS: Final = frozenset("fiu")
_BLOCK: Final = 1 << 17  # float64 elements: 1 MiB of the thread's scratch_block, stays in cache
_PAGE: Final = 4096


def fast_stats(array: np.ndarray) -> TensorStats:
    """:func:`tracespec.format.stats.compute_stats` of ``array``, in few passes.

    Min and max in the array's dtype where numpy has SIMD loops for it (4- and 8-byte numbers);
    then, a cache-sized block at a time, the block is converted into a reused float64 buffer,
    summed, squared in place and summed again, so the float64 work never leaves the cache (the
    extremes of narrow floats, bfloat16 or float16, come from that block too: numpy's own
    loops for them are twenty times slower). numpy runs single-threaded with the GIL released:
    no thread pool to wake per tensor. :func:`stats_from_sums` keeps the reference's semantics.
    """
    flat = array.reshape(-1)
    count = flat.size
    if count == 0 or (flat.dtype.kind not in _FAST_KINDS and flat.dtype.name != "bfloat16"):
        return compute_stats(array)
    buffer = scratch_block()[:_BLOCK]
    native_extremes = flat.dtype.kind in _FAST_KINDS and flat.dtype.itemsize >= 4
    total = squares = 0.0
    low, high = math.inf, -math.inf
    with np.errstate(all="ignore"):  # overflow to inf is detected below, never a warning
        for start in range(0, count, _BLOCK):
            block = flat[start : start + _BLOCK]
            work = buffer[: block.size]
            np.copyto(work, block, casting="unsafe")
            if not native_extremes:
                low, high = min(low, float(work.min())), max(high, float(work.max()))
            total += float(np.add.reduce(work))
            np.multiply(work, work, out=work)
            squares += float(np.add.reduce(work))
    if native_extremes:
        low, high = float(flat.min()), float(flat.max())
    return stats_from_sums(count, low, high, total, squares, lambda: compute_stats(array))


def stats_from_sums(
    count: int, low: float, high: float, total: float, squares: float, reference: Callable[[], TensorStats]
) -> TensorStats:
    """Statistics from one pass's float64 sums, or ``reference()`` where the sums cannot be
    trusted: not finite (NaN or Inf present, or an overflow), or a variance that would lose
    digits to cancellation. Either way the result has :func:`compute_stats`'s semantics."""
    mean = total / count
    m2 = squares - total * mean
    if not math.isfinite(total + squares) or mean * mean * count > _CANCELLATION_RATIO * max(m2, 0.0):
        with np.errstate(all="ignore"):  # squares beyond float64 range are inf, not a warning
            return reference()
    return TensorStats(count, low, high, mean, math.sqrt(max(m2, 0.0) / count), math.sqrt(squares), 0, 0)


class HostBufferPool:
    """Reusable host buffers for ``full`` copies.

    Writing into fresh memory costs a page fault per 4 KiB, more than the copy itself; buffers
    are reused once nobody but the pool references them (the writer drops its reference when
    the data is on disk). The pool holds at most what was in flight at once, which the writer
    bounds (``max_pending_bytes``).
    """

    def __init__(self) -> None:
        self._buffers: dict[Hashable, list[np.ndarray]] = {}
        self._next: dict[Hashable, int] = {}  # where the next search starts, per key

    def copy(self, values: np.ndarray, key: Hashable = None) -> np.ndarray:
        """A C-contiguous copy of ``values`` in a pooled buffer (``key``: see :meth:`take`)."""
        out = self.take(values.nbytes, key).view(values.dtype).reshape(values.shape)
        np.copyto(out, values, casting="no")
        return out

    def take(self, nbytes: int, key: Hashable = None) -> np.ndarray:
        """A free, page-aligned buffer of ``nbytes`` bytes (uint8), for the caller to fill.

        Buffers taken with a ``key`` are kept apart from the others: a caller that takes the
        same sizes under the same keys every step (the ONNX Runtime recorder keys by size) finds
        a free one among its own. The search starts after the buffer taken last and stops at
        one of exactly the right size: buffers are taken and released in the same order step
        after step, so the next one is usually free.
        """
        buffers = self._buffers.setdefault(key, [])
        start = self._next.get(key, 0)
        best = None
        for offset in range(len(buffers)):
            i = (start + offset) % len(buffers)
            size = buffers[i].nbytes
            # 2 references, the list's and getrefcount's argument: no view of it is alive.
            if size >= nbytes + _PAGE and sys.getrefcount(buffers[i]) == 2 and (best is None or size < buffers[best].nbytes):
                best = i
                if size == nbytes + _PAGE:
                    break
        if best is None:
            buffers.append(np.empty(nbytes + _PAGE, dtype=np.uint8))
            best = len(buffers) - 1
        self._next[key] = best + 1
        # Page-aligned, so the writer's direct I/O sends it to the disk without a staging copy.
        # The list keeps the allocation itself: numpy points every view's base at it, which is
        # what the reference count above sees.
        buffer = buffers[best]
        start = -buffer.ctypes.data % _PAGE
        return buffer[start : start + nbytes]

    def clear(self) -> None:
        self._buffers.clear()
        self._next.clear()
