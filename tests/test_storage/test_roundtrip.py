"""Property tests: writing a tensor and reading it back is the identity, bit for bit.

Every spec dtype, 0-d, empty and non-contiguous arrays; NaN payloads and negative zeros must
survive, so arrays are compared by their bytes. Each written array is also read with plain zarr
(the spec's promise to readers without tracespec).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st

from tracespec import TraceWriter, load_trace
from tracespec.format.dtypes import dtype_of
from tracespec.format.stats import compute_stats, content_hash
from tracespec.storage.zarr_store import CHUNK_BYTES
from tracespec.testing.strategies import ROUNDTRIP_DTYPES, same_bits, tensors


def write_then_read(folder: Path, arrays: list[np.ndarray], **writer_options: object) -> None:
    """Write ``arrays`` as one step's records and check every one reads back identically."""
    with TraceWriter(folder, framework="numpy", durable=False, **writer_options) as writer:  # type: ignore[arg-type]
        node = writer.add_node("", "Model")
        ids = [
            writer.add_tensor(step=0, stage="forward", node=node, call=0, role="output", slot=str(i), array=a)
            for i, a in enumerate(arrays)
        ]
    trace = load_trace(folder)
    rows = {row["id"]: row for row in trace.tensors().to_pylist()}
    store = zarr.open_group(store=str(folder / "rank_0" / "tensors.zarr"), mode="r")
    for record_id, original in zip(ids, arrays):
        row = rows[record_id]
        assert row["dtype"] == dtype_of(original).name
        assert row["shape"] == list(original.shape)
        assert row["hash"] == content_hash(original)
        stats = compute_stats(original)
        assert (row["nan_count"], row["inf_count"]) == (stats.nan_count, stats.inf_count)
        assert row["mean"] == stats.mean and row["l2"] == stats.l2
        got = trace.read(0, row["array"])
        assert same_bits(got, original), (row, got, original)
        plain = np.asarray(store[row["array"]][...])
        assert same_bits(plain.view(got.dtype) if plain.dtype != got.dtype else plain, original)


@pytest.mark.parametrize("dtype", ROUNDTRIP_DTYPES)
@settings(max_examples=15, deadline=None)
@given(data=st.data())
def test_each_dtype_roundtrips(dtype: str, data: st.DataObject) -> None:
    arrays = data.draw(st.lists(tensors(dtype=st.just(dtype)), min_size=1, max_size=4))
    # A tiny chunk limit splits arrays over many chunks with a padded edge chunk.
    chunk_limit = data.draw(st.sampled_from([CHUNK_BYTES, 16]))
    with tempfile.TemporaryDirectory() as tmp:
        write_then_read(Path(tmp) / "t", arrays, chunk_limit=chunk_limit)


@settings(max_examples=60, deadline=None)
@given(arrays=st.lists(tensors(), min_size=1, max_size=6))
def test_any_tensors_roundtrip(arrays: list[np.ndarray]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        write_then_read(Path(tmp) / "t", arrays)
