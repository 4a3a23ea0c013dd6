"""Host memory: one pass over a host array for its ``full`` copy, statistics and content hash, and
the reused buffers of ``full`` copies.

Constraints:
- Results equal the reference's rules exactly: the content hash is
  :func:`tracespec.format.stats.content_hash`'s value (xxh3_128's streaming digest equals its
  one-shot digest), the statistics have :func:`tracespec.format.stats.compute_stats`'s semantics
  (the reference itself wherever one pass's sums cannot be trusted: see :func:`stats_from_sums`).
- Deterministic whatever the threads: where a large array is split between the caller's thread
  and the helper thread, the one-thread path splits it the same way and adds the same partial
  sums in the same order.
- A forked child starts without the parent's helper thread (it would wait forever on a thread
  that does not exist there) and makes its own when it needs one.
"""

from __future__ import annotations

import math
import os
import sys
import threading
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Final

import numpy as np
import xxhash

from tracespec.format.stats import HASH_ALGORITHM, TensorStats, compute_stats, content_hash, scratch_block

__all__ = ["HostBufferPool", "fast_stats", "stats_from_sums", "summarize_host"]

# Above this ratio of n * mean^2 to the sum of squared deviations, the one-pass variance loses
# digits to cancellation: the exact reference takes over.
_CANCELLATION_RATIO: Final = 1e4
# Elements per block: the block and its float64 conversion (512 KiB) stay in the core's cache
# while it is copied, hashed and summed, so each byte is read from memory once.
_BLOCK: Final = 1 << 16
# From this many elements (8 MiB of float32) an array's second half is summarised (and copied)
# on the helper thread while the caller's thread does the first half: during a hook the model's
# own threads wait, so the helper has a core to itself. Below it, waking the helper (a thread
# asleep, or a core that the model's threads still spin on) costs what the split saves: measured
# on the benchmark step, splitting from 512 Ki elements made the hooks' summaries slower.
SPLIT_ELEMENTS: Final = 1 << 21
_PAGE: Final = 4096


def _fast_dtype(dtype: np.dtype) -> bool:
    """Whether one pass of numpy's loops summarises ``dtype`` (native-order numbers, bfloat16)."""
    return dtype.isnative and (dtype.kind in "fiu" or dtype.name == "bfloat16")


def _native_extremes(dtype: np.dtype) -> bool:
    """Whether min and max run fast in the dtype itself; float16 and bfloat16 take them from
    the float64 block (numpy's own loops for them are twenty times slower)."""
    return dtype.kind in "iu" or (dtype.kind == "f" and dtype.itemsize >= 4)


@dataclass(slots=True)
class _Sums:
    """One pass's float64 sums over a run of blocks."""

    total: float = 0.0
    squares: float = 0.0
    low: float = math.inf
    high: float = -math.inf

    def then(self, other: _Sums) -> _Sums:
        """These sums followed by ``other``'s (addition in this order: the result must not depend
        on which thread computed which run)."""
        return _Sums(self.total + other.total, self.squares + other.squares, min(self.low, other.low), max(self.high, other.high))


def _pass(
    flat: np.ndarray, start: int, stop: int, copy_to: np.ndarray | None, stats: bool, digest: xxhash.xxh3_128 | None
) -> _Sums:
    """One pass over ``flat[start:stop]`` a block at a time: copy the block to ``copy_to`` (the
    same positions), feed its bytes to ``digest``, and add its statistics' sums, while it is in
    the cache. numpy and xxhash release the GIL, so two threads run two passes at once."""
    sums = _Sums()
    work = scratch_block()[:_BLOCK]
    native = _native_extremes(flat.dtype)
    with np.errstate(all="ignore"):  # overflow to inf is detected by stats_from_sums, never a warning
        for begin in range(start, stop, _BLOCK):
            end = min(begin + _BLOCK, stop)
            block = flat[begin:end]
            if copy_to is not None:
                np.copyto(copy_to[begin:end], block, casting="no")
            if digest is not None:
                digest.update(block.view(np.uint8).data)
            if not stats:
                continue
            if native:
                sums.low, sums.high = min(sums.low, float(block.min())), max(sums.high, float(block.max()))
            values = work[: end - begin]
            np.copyto(values, block, casting="unsafe")
            if not native:
                sums.low, sums.high = min(sums.low, float(values.min())), max(sums.high, float(values.max()))
            sums.total += float(np.add.reduce(values))
            # numpy's own SIMD loop, not np.dot: BLAS threads stall on a busy machine
            sums.squares += float(np.einsum("i,i->", values, values))
    return sums


def summarize_host(
    array: np.ndarray, *, stats: bool, digest: bool, copy_to: np.ndarray | None = None
) -> tuple[TensorStats | None, str | None]:
    """The statistics (``stats``) and content hash (``digest``) of a host array, and its copy
    into ``copy_to`` (an array of ``array``'s shape and dtype, C-contiguous), in one pass.

    Each cache-sized block is copied, hashed and summed while it is in the cache, instead of
    one pass over memory for each. From :data:`SPLIT_ELEMENTS` elements, when statistics are
    wanted, the second half is copied and summed on the helper thread (the hash stays in order
    on the caller's thread). A strided array is copied first (into ``copy_to`` where given) and
    the copy summarised; dtypes numpy has no fast loops for (bool, complex, float8, non-native
    byte order) go to the reference functions.
    """
    if not array.flags.c_contiguous:
        if copy_to is None:
            copy_to = np.empty_like(array, order="C")
        np.copyto(copy_to, array, casting="no")
        array, copy_to = copy_to, None
    if not _fast_dtype(array.dtype) or not (stats or copy_to is not None):
        # The reference functions: for dtypes without fast loops, and for the hash alone (xxh3's
        # one-shot call is as fast as any pass).
        if copy_to is not None:
            np.copyto(copy_to, array, casting="no")
        return (compute_stats(array) if stats else None, content_hash(array) if digest else None)
    flat = array.reshape(-1)
    flat_copy = None if copy_to is None else copy_to.reshape(-1)
    hasher = xxhash.xxh3_128() if digest else None
    count = flat.size
    if stats and count >= SPLIT_ELEMENTS:
        # Two halves, added in order, whichever thread sums the second: the helper, or this
        # thread where it is the helper itself (it would wait for itself).
        middle = -(-count // 2 // _BLOCK) * _BLOCK  # a block boundary
        helper = None if threading.current_thread().name.startswith(_HELPER_NAME) else _helper()
        second = None if helper is None else helper.submit(_pass, flat, middle, count, flat_copy, True, None)
        try:
            sums = _pass(flat, 0, middle, flat_copy, True, hasher)
            if hasher is not None:
                _pass(flat, middle, count, None, False, hasher)
        finally:
            later = None if second is None else second.result()  # never leave the helper reading freed memory
        sums = sums.then(later if later is not None else _pass(flat, middle, count, flat_copy, True, None))
    else:
        sums = _pass(flat, 0, count, flat_copy, stats, hasher)
    summary = None
    if stats:
        summary = (
            compute_stats(array)
            if count == 0
            else stats_from_sums(count, sums.low, sums.high, sums.total, sums.squares, lambda: compute_stats(array))
        )
    return summary, None if hasher is None else f"{HASH_ALGORITHM}:{hasher.hexdigest()}"


def fast_stats(array: np.ndarray) -> TensorStats:
    """:func:`tracespec.format.stats.compute_stats` of ``array``, in one pass (:func:`summarize_host`)."""
    stats, _ = summarize_host(array, stats=True, digest=False)
    assert stats is not None
    return stats


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


_HELPER_NAME: Final = "tracespec-host"
_helper_pool: ThreadPoolExecutor | None = None
_helper_lock = threading.Lock()


def _helper() -> ThreadPoolExecutor:
    """The helper thread (one, made when first needed)."""
    global _helper_pool
    with _helper_lock:
        if _helper_pool is None:
            _helper_pool = ThreadPoolExecutor(1, thread_name_prefix=_HELPER_NAME)
        return _helper_pool


def _forget_helper() -> None:
    """In a forked child: the parent's helper thread is not there; make a new one when needed."""
    global _helper_pool, _helper_lock
    _helper_pool = None
    _helper_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_helper)


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
