"""Back-pressure: a caller that outruns the disk waits; memory held by the writer stays bounded
by ``max_pending_bytes`` (plus the one array being written).

The worker is stalled on purpose (its array writes wait on a gate), so the bound is checked by
counting what the caller managed to hand over, not by timing anything.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import tracespec.storage.writer as writer_module
from tracespec import TraceWriter, load_trace

MIB = 1 << 20


def test_caller_blocks_once_pending_bytes_reach_the_bound(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gate, entered = threading.Event(), threading.Event()
    real_write_array = writer_module.write_array

    def gated_write_array(*args: Any, **kwargs: Any) -> None:
        entered.set()
        gate.wait()
        real_write_array(*args, **kwargs)

    monkeypatch.setattr(writer_module, "write_array", gated_write_array)
    total, limit = 20, 4 * MIB
    handed_over: list[int] = []
    writer = TraceWriter(tmp_path / "t", framework="numpy", durable=False, max_pending_bytes=limit)
    node = writer.add_node("", "Model")

    def produce() -> None:
        for i in range(total):
            array = np.full(MIB // 4, i, dtype=np.float32)  # 1 MiB each, a new buffer every time
            writer.add_tensor(step=0, stage="forward", node=node, call=i, role="output", slot="0", array=array)
            handed_over.append(i)

    producer = threading.Thread(target=produce)
    producer.start()
    try:
        assert entered.wait(30), "the worker never started writing"
        producer.join(timeout=1.0)
        assert producer.is_alive(), "the caller was never made to wait"
        # Arrays handed over but not written: at most the bound, plus the one the worker holds.
        assert 1 <= len(handed_over) <= limit // MIB + 1
    finally:
        gate.set()
        producer.join()
    writer.close()
    assert len(handed_over) == total
    values = [float(row["max"]) for row in load_trace(tmp_path / "t").tensors().to_pylist()]
    assert values == [float(i) for i in range(total)]


def test_an_array_larger_than_the_bound_still_goes_through(tmp_path: Path) -> None:
    with TraceWriter(tmp_path / "t", framework="numpy", durable=False, max_pending_bytes=1024) as w:
        node = w.add_node("", "Model")
        for i in range(3):
            w.add_tensor(step=0, stage="forward", node=node, call=i, role="output", slot="0", array=np.ones(MIB, np.uint8))
    assert len(load_trace(tmp_path / "t").tensors()) == 3
