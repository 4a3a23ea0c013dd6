"""Chunking: arrays split over several chunks (edge chunks padded) read back through our reader
and through zarr itself; chunk shapes split leading axes only."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import zarr

from tracespec import TraceWriter, load_trace, validate_trace
from tracespec.storage.zarr_store import WrittenFiles, chunk_shape_for, write_array


@pytest.mark.parametrize(
    ("shape", "limit", "chunk"),
    [
        ((10, 7), 3 * 7 * 4, (3, 7)),  # whole rows, the last chunk padded
        ((4, 1000), 100, (1, 25)),  # a row is too big: split the row itself
        ((2, 3, 5), 10_000, (2, 3, 5)),  # fits in one chunk
        ((), 1, ()),  # 0-d: one chunk
        ((0, 5), 8, (1, 2)),  # empty: a valid chunk shape, no chunks
    ],
)
def test_chunk_shape_splits_leading_axes(shape: tuple[int, ...], limit: int, chunk: tuple[int, ...]) -> None:
    assert chunk_shape_for(shape, 4, limit) == chunk


def test_chunked_array_reads_back_through_reader_and_zarr(tmp_path: Path) -> None:
    array = np.arange(70, dtype=np.float32).reshape(10, 7) - 35.5
    with TraceWriter(tmp_path / "t", framework="numpy", chunk_limit=3 * 7 * 4) as w:
        node = w.add_node("", "Model")
        w.add_tensor(step=0, stage="forward", node=node, call=0, role="output", slot="0", array=array)
    trace = load_trace(tmp_path / "t")
    (row,) = trace.tensors().to_pylist()
    folder = tmp_path / "t" / "rank_0" / "tensors.zarr" / row["array"]
    chunk_files = sorted(p for p in (folder / "c").rglob("*") if p.is_file())
    assert [p.relative_to(folder).as_posix() for p in chunk_files] == ["c/0/0", "c/1/0", "c/2/0", "c/3/0"]
    # every chunk, the edge one included, holds a full chunk's bytes (the edge is padded)
    assert {p.stat().st_size for p in chunk_files} == {3 * 7 * 4}
    np.testing.assert_array_equal(trace.read(0, row["array"]), array, strict=True)
    plain = zarr.open_array(store=str(tmp_path / "t" / "rank_0" / "tensors.zarr"), path=row["array"], mode="r")
    assert plain.chunks == (3, 7)
    np.testing.assert_array_equal(plain[...], array, strict=True)
    np.testing.assert_array_equal(plain[8:10, 2:5], array[8:10, 2:5], strict=True)
    assert validate_trace(tmp_path / "t", deep=True).arrays == 1


def test_row_split_chunks_cover_every_element(tmp_path: Path) -> None:
    array = np.random.default_rng(3).standard_normal((3, 5, 11)).astype(np.float64)
    with TraceWriter(tmp_path / "t", framework="numpy", chunk_limit=40) as w:
        node = w.add_node("", "Model")
        w.add_tensor(step=0, stage="forward", node=node, call=0, role="output", slot="0", array=array)
    trace = load_trace(tmp_path / "t")
    (row,) = trace.tensors().to_pylist()
    meta = trace.parts[0].array_meta(row["array"])
    assert meta.chunk_shape == (1, 1, 5)
    assert len(meta.chunk_keys()) == 3 * 5 * math.ceil(11 / 5)
    np.testing.assert_array_equal(trace.read(0, row["array"]), array, strict=True)
    plain = zarr.open_array(store=str(tmp_path / "t" / "rank_0" / "tensors.zarr"), path=row["array"], mode="r")
    np.testing.assert_array_equal(plain[...], array, strict=True)


def test_every_created_folder_is_recorded_for_fsync(tmp_path: Path) -> None:
    """Deep chunk keys (c/i/j/k) create several folders; each new entry must be made durable."""
    written = WrittenFiles()
    nbytes, folders = write_array(
        tmp_path, "step_0/3", np.ones((2, 2, 2), np.float32), durable=False, chunk_limit=4, written=written
    )
    created = {p.relative_to(tmp_path).as_posix() for p in written.folders}
    assert {"step_0", "step_0/3", "step_0/3/c", "step_0/3/c/0", "step_0/3/c/0/0", "step_0/3/c/1/1"} <= created
    assert folders == written.folders and nbytes == written.nbytes == 8 * 4 + len((tmp_path / "step_0/3/zarr.json").read_bytes())
