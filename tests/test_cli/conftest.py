"""A small real trace for the CLI tests: a two-layer model over two steps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tracespec import TraceWriter


@pytest.fixture
def small_trace(tmp_path: Path) -> Path:
    path = tmp_path / "run"
    rng = np.random.default_rng(0)
    with TraceWriter(path, framework="numpy", framework_version="2.x") as w:
        root = w.add_node("", "MLP")
        fc1 = w.add_node("fc1", "Linear", parent=root, position=0)
        fc2 = w.add_node("fc2", "Linear", parent=root, position=1)
        for step in (0, 1):
            h = rng.standard_normal((2, 3)).astype(np.float32)
            h[0, 0] = np.nan
            w.add_tensor(
                step=step,
                stage="forward",
                node=fc1,
                role="parameter",
                slot="weight",
                array=rng.standard_normal((3, 4)).astype(np.float32),
            )
            w.add_tensor(step=step, stage="forward", node=fc1, call=0, role="output", slot="0", array=h)
            w.add_tensor(step=step, stage="forward", node=fc2, call=0, role="output", slot="0", array=h.sum(1), level="hash")
            w.add_value(step=step, stage="forward", node=fc2, call=0, role="output", slot="1", value=None)
            for node, order in ((fc1, 1), (fc2, 2), (fc2, 3)):
                w.add_call(
                    step=step, stage="forward", node=node, call=order - 1 if node == fc1 else order - 2, begin=order, end=order
                )
            w.end_step(step)
    return path
