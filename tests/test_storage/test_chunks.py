"""Chunking: arrays split over several chunks (edge chunks padded) read back through our reader
and through zarr itself; chunk shapes split leading axes only; a range of elements read from the
chunks that hold it alone."""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest
import zarr

from tracespec import TraceWriter, load_trace, validate_trace
from tracespec.errors import ChunkMissingError, InvalidShapeError
from tracespec.storage.zarr_store import WrittenFiles, chunk_shape_for, chunks_of_range, write_array


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


def _one_array_trace(path: Path, array: np.ndarray, **options: Any) -> tuple[Path, str]:
    """A trace of one tensor; the trace and the array's name."""
    with TraceWriter(path, framework="numpy", **options) as w:
        node = w.add_node("", "Model")
        w.add_tensor(step=0, stage="forward", node=node, call=0, role="output", slot="0", array=array)
    return path, load_trace(path).tensors().to_pylist()[0]["array"]


@pytest.mark.parametrize("compression", [None, "zstd"])
@pytest.mark.parametrize(
    ("start", "stop", "chunks"),
    [
        (0, 70, ["0/0", "1/0", "2/0", "3/0"]),  # every element
        (23, 40, ["1/0"]),  # inside one chunk (rows 3 to 5)
        (20, 43, ["0/0", "1/0", "2/0"]),  # the last element of one chunk to the first of the one after next
        (63, 70, ["3/0"]),  # the edge chunk, padded
        (30, 30, []),  # no element
    ],
)
def test_a_range_reads_only_the_chunks_that_hold_it(
    tmp_path: Path, compression: str | None, start: int, stop: int, chunks: list[str]
) -> None:
    array = np.arange(70, dtype=np.float32).reshape(10, 7) - 35.5
    path, name = _one_array_trace(tmp_path / "t", array, chunk_limit=3 * 7 * 4, compression=compression)
    folder = path / "rank_0" / "tensors.zarr" / name / "c"
    for chunk in folder.rglob("*"):
        if chunk.is_file() and chunk.relative_to(folder).as_posix() not in chunks:
            chunk.unlink()  # a chunk the range does not need: touching it would fail
    trace = load_trace(path)
    meta = trace.parts[0].array_meta(name)
    assert ["/".join(map(str, key)) for key in chunks_of_range(meta, start, stop)] == chunks
    found = trace.read_range(0, name, start, stop)
    np.testing.assert_array_equal(found, array.reshape(-1)[start:stop], strict=True)
    if len(chunks) < 4:
        with pytest.raises(ChunkMissingError):
            trace.read(0, name)


def test_a_range_of_a_row_split_array_and_of_a_bit_stored_dtype(tmp_path: Path) -> None:
    """Chunks that split a row (one row is many chunks), and bfloat16 (stored as its bits)."""
    array = (np.random.default_rng(4).standard_normal((3, 5, 11)) * 4).astype(ml_dtypes.bfloat16)
    path, name = _one_array_trace(tmp_path / "t", array, chunk_limit=10)
    trace = load_trace(path)
    assert trace.parts[0].array_meta(name).chunk_shape == (1, 1, 5)
    for start, stop in [(0, 165), (4, 17), (55, 56), (160, 165)]:
        found = trace.read_range(0, name, start, stop)
        np.testing.assert_array_equal(found, array.reshape(-1)[start:stop], strict=True)
        assert found.dtype == ml_dtypes.bfloat16


def test_a_range_of_an_array_chunked_on_trailing_axes_by_another_tool(tmp_path: Path) -> None:
    """An array another Zarr writer chunked along its last axis: read through zarr, the rows of the
    range only (a chunk of other rows, deleted, is never needed)."""
    array = np.arange(60, dtype=np.float64).reshape(6, 10)
    path, name = _one_array_trace(tmp_path / "t", np.zeros((6, 10)))
    store = path / "rank_0" / "tensors.zarr"
    shutil.rmtree(store / name)
    plain = zarr.create_array(store=str(store), name=name, shape=(6, 10), chunks=(2, 5), dtype="float64", compressors=None)
    plain[...] = array
    trace = load_trace(path)
    assert trace.parts[0].array_meta(name).chunk_shape == (2, 5)
    for chunk in (store / name / "c" / "2").rglob("*"):
        chunk.unlink()  # rows 4 and 5
    np.testing.assert_array_equal(trace.read_range(0, name, 13, 37), array.reshape(-1)[13:37], strict=True)
    with pytest.raises(ChunkMissingError):
        trace.read_range(0, name, 13, 41)


def test_a_range_beyond_the_array_is_refused(tmp_path: Path) -> None:
    path, name = _one_array_trace(tmp_path / "t", np.zeros(10, np.float32))
    trace = load_trace(path)
    for start, stop in [(5, 11), (-1, 3), (6, 5)]:
        with pytest.raises(InvalidShapeError, match="are not among its 10"):
            trace.read_range(0, name, start, stop)
