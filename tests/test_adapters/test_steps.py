"""Which steps are recorded (``every``, ``steps``): those, and only those, are steps of the trace."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import tracespec
from tracespec.testing.adapter_tests import TraceView


@pytest.mark.parametrize(("options", "recorded"), [({"every": 2}, [0, 2, 4]), ({"steps": range(1, 3)}, [1, 2])])
def test_only_recorded_steps_are_steps_of_the_trace(options: dict[str, Any], recorded: list[int], tmp_path: Path) -> None:
    layer = nn.Linear(2, 2)
    with tracespec.record(layer, tmp_path / "t", **options) as rec:
        for _ in range(5):
            layer(torch.ones(1, 2)).sum().backward()
            rec.step()
    view = TraceView(tmp_path / "t")
    assert view.trace.steps == recorded
    assert sorted({r["step"] for r in view.tensors}) == recorded
