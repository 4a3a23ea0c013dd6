"""A first end-to-end check of the writer and reader on a tiny trace."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tracespec import TraceWriter, load_trace, validate_trace


def test_written_tensor_reads_back(tmp_path: Path) -> None:
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    with TraceWriter(tmp_path / "t", framework="numpy") as w:
        node = w.add_node("", "Model")
        rid = w.add_tensor(step=0, stage="forward", node=node, call=0, role="output", slot="0", array=x)
        w.end_step(0)
    trace = load_trace(tmp_path / "t")
    (row,) = trace.tensors().to_pylist()
    assert row["id"] == rid and row["shape"] == [3, 4] and row["mean"] == 5.5
    np.testing.assert_array_equal(trace.read(0, row["array"]), x)
    assert validate_trace(tmp_path / "t", deep=True).complete
