"""Element-wise error of one pair of aligned tensors, streamed from two traces.

Constraints:
- Memory stays bounded whatever the tensor size: a tensor larger than ``BLOCK_BYTES`` is read in
  slices of its leading axis (whole chunks of the Zarr store), and only a fixed-size histogram and
  heatmap are kept.
- Errors are computed in float64. NaN in both tensors at the same position is agreement; a
  non-finite value on one side only (or infinities of different signs) is an infinite error.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

import numpy as np

from tracespec.errors import ChunkMissingError
from tracespec.storage import ArrayMeta, Trace

__all__ = ["BLOCK_BYTES", "ElementwiseError", "elementwise_error"]

BLOCK_BYTES: Final = 64 << 20
"""Largest slice of one tensor held in memory at a time."""

HIST_DECADES: Final = tuple(range(-16, 9))
"""Histogram bins: one per power of ten of the absolute error, 1e-16 to 1e8 (plus zero and non-finite)."""

HEATMAP_ROWS: Final = 48
HEATMAP_COLS: Final = 96


@dataclass(frozen=True)
class ElementwiseError:
    """What the report shows of one tensor pair's element-wise error."""

    shape: tuple[int, ...]
    count: int
    max_abs: float
    mean_abs: float
    zero: int
    nonfinite: int
    decade_counts: tuple[int, ...]
    """``decade_counts[i]`` elements have ``10**HIST_DECADES[i] <= |a - b| < 10**(HIST_DECADES[i] + 1)``
    (the first and last bins are open-ended)."""
    heatmap: tuple[tuple[float, ...], ...]
    """Max absolute error per cell: rows are the tensor's leading axes flattened, columns its last axis."""
    rows: int
    cols: int

    def histogram(self) -> tuple[list[int], list[str]]:
        """Counts and labels with empty leading and trailing decades trimmed; ``0`` and ``inf`` bins kept."""
        used = [i for i, c in enumerate(self.decade_counts) if c]
        counts, labels = [self.zero], ["0"]
        if used:
            for i in range(used[0], used[-1] + 1):
                counts.append(self.decade_counts[i])
                labels.append(f"1e{HIST_DECADES[i]}")
        if self.nonfinite:
            counts.append(self.nonfinite)
            labels.append("inf")
        return counts, labels


def _rows_per_block(metas: list[ArrayMeta]) -> int:
    """Slices of the leading axis small enough that one slice of every tensor fits ``BLOCK_BYTES``."""
    shape = metas[0].shape
    if not shape or shape[0] == 0:
        return 1
    per_row = max(m.nbytes // shape[0] for m in metas)
    return max(1, BLOCK_BYTES // max(per_row, 1))


def _read_blocks(trace: Trace, rank: int, array: str, rows: int) -> Iterator[np.ndarray]:
    """The tensor stored as ``array``, in slices of ``rows`` along its leading axis."""
    part = trace.parts[rank]
    meta = part.array_meta(array)
    if not meta.shape or rows >= meta.shape[0]:
        yield part.read_array(array)
        return
    missing = part.missing_chunks(meta)
    if missing:
        raise ChunkMissingError(f"{part.store.name}/{array}: chunk {missing[0]} is missing")
    import zarr

    with part.local_array(array):  # a remote trace's chunks, fetched into its cache meanwhile
        stored = zarr.open_array(store=str(part.store), path=array, mode="r")
        for start in range(0, meta.shape[0], rows):
            block = np.asarray(stored[start : start + rows])
            yield block.view(meta.dtype.numpy) if meta.dtype.stored_as_bits else block


def _abs_error(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        err = np.abs(a64 - b64)
    same = (a64 == b64) | (np.isnan(a64) & np.isnan(b64))
    err[same] = 0.0
    err[np.isnan(err)] = np.inf
    return err


class _Accumulator:
    def __init__(self, shape: tuple[int, ...]) -> None:
        self.shape = shape
        self.cols = shape[-1] if shape else 1
        self.rows = math.prod(shape[:-1]) if len(shape) > 1 else 1
        self.grid_rows = max(1, min(self.rows, HEATMAP_ROWS))
        self.grid_cols = max(1, min(self.cols, HEATMAP_COLS))
        self.grid = np.zeros((self.grid_rows, self.grid_cols))
        self.col_starts = (np.arange(self.grid_cols) * self.cols) // self.grid_cols
        self.decades = np.zeros(len(HIST_DECADES), dtype=np.int64)
        self.row = 0
        self.count = self.zero = self.nonfinite = 0
        self.max_abs = 0.0
        self.total = 0.0

    def add(self, err: np.ndarray) -> None:
        flat = err.reshape(-1, self.cols) if err.size else err.reshape(0, self.cols)
        n = flat.size
        self.count += n
        finite = np.isfinite(flat)
        self.nonfinite += int(n - finite.sum())
        values = flat[finite]
        self.zero += int((values == 0).sum())
        positive = values[values > 0]
        if positive.size:
            exps = np.clip(np.floor(np.log10(positive)), HIST_DECADES[0], HIST_DECADES[-1]).astype(np.int64)
            self.decades += np.bincount(exps - HIST_DECADES[0], minlength=len(HIST_DECADES))
            self.max_abs = max(self.max_abs, float(positive.max()))
            self.total += float(positive.sum())
        if flat.shape[0]:
            per_cell = np.maximum.reduceat(flat, self.col_starts, axis=1)
            rows = ((np.arange(flat.shape[0]) + self.row) * self.grid_rows) // self.rows
            np.maximum.at(self.grid, rows, per_cell)
        self.row += flat.shape[0]

    def result(self) -> ElementwiseError:
        has_inf = self.nonfinite > 0
        return ElementwiseError(
            shape=self.shape,
            count=self.count,
            max_abs=math.inf if has_inf else self.max_abs,
            mean_abs=math.inf if has_inf else (self.total / self.count if self.count else 0.0),
            zero=self.zero,
            nonfinite=self.nonfinite,
            decade_counts=tuple(int(c) for c in self.decades),
            heatmap=tuple(tuple(float(v) for v in row) for row in self.grid),
            rows=self.rows,
            cols=self.cols,
        )


def elementwise_error(
    trace_a: Trace,
    array_a: str,
    trace_b: Trace,
    array_b: str,
    *,
    rank_a: int = 0,
    rank_b: int = 0,
    transpose_b: bool = False,
) -> ElementwiseError | None:
    """The element-wise error between two stored tensors, or ``None`` if their shapes do not pair.

    ``transpose_b`` swaps the last two axes of ``b`` first (a Linear weight in the other
    framework's layout, as the verdict's ``transform`` says); such tensors are parameters and are
    read whole.
    """
    shape_a = trace_a.parts[rank_a].array_meta(array_a).shape
    shape_b = trace_b.parts[rank_b].array_meta(array_b).shape
    if transpose_b and len(shape_b) >= 2:
        shape_b = (*shape_b[:-2], shape_b[-1], shape_b[-2])
    if shape_a != shape_b:
        return None
    acc = _Accumulator(shape_a)
    if transpose_b:
        a = trace_a.read(rank_a, array_a)
        b = np.swapaxes(trace_b.read(rank_b, array_b), -1, -2) if len(shape_a) >= 2 else trace_b.read(rank_b, array_b)
        acc.add(_abs_error(a, b))
        return acc.result()
    rows = _rows_per_block([trace_a.parts[rank_a].array_meta(array_a), trace_b.parts[rank_b].array_meta(array_b)])
    for block_a, block_b in zip(_read_blocks(trace_a, rank_a, array_a, rows), _read_blocks(trace_b, rank_b, array_b, rows)):
        acc.add(_abs_error(block_a, block_b))
    return acc.result()
