"""``tracespec.record`` picks the adapter from the model, and every adapter's result honours one
contract (``tracespec.adapters.Recording``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import paddle
import pytest
import torch
from onnx import TensorProto, helper

import tracespec
from tracespec.adapters import Recording


def _relu_model(path: Path | None = None) -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"], name="relu")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    if path is not None:
        onnx.save(model, path)
    return model


FRESH_PROCESS = """
import sys, numpy as np
import tracespec
model = sys.argv[1]
if model == "proto":
    import onnx
    model = onnx.load(sys.argv[3])
assert "onnxruntime" not in sys.modules
with tracespec.record(model, sys.argv[2], capture="full") as rec:
    rec.run({"x": np.array([[-1, 2, -3], [4, -5, 6]], dtype=np.float32)})
print(sorted(r["route"] for r in tracespec.load_trace(sys.argv[2]).records().to_pylist() if r["role"] == "output"))
"""


@pytest.mark.parametrize("given", ["path", "proto"])
def test_an_onnx_model_is_recorded_before_onnxruntime_is_imported(tmp_path: Path, given: str) -> None:
    """A user's first line may be ``tracespec.record("model.onnx", ...)``: nothing imported yet."""
    _relu_model(tmp_path / "model.onnx")
    model = str(tmp_path / "model.onnx") if given == "path" else "proto"
    done = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS, model, str(tmp_path / "trace"), str(tmp_path / "model.onnx")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "['', 'Relu']"


def test_every_adapter_returns_a_recording(tmp_path: Path) -> None:
    recordings = [
        tracespec.record(torch.nn.Linear(3, 2), tmp_path / "torch"),
        tracespec.record(paddle.nn.Linear(3, 2), tmp_path / "paddle"),
        tracespec.record(_relu_model(), tmp_path / "onnx"),
    ]
    for recording in recordings:
        assert isinstance(recording, Recording), type(recording)
        with recording as active:
            active.flush()
        assert recording.path == tmp_path / recording.path.name
        assert tracespec.load_trace(recording.path).complete


def test_a_model_of_no_framework_is_refused_naming_what_is_accepted(tmp_path: Path) -> None:
    with pytest.raises(tracespec.TracespecError, match="torch.nn.Module, a paddle.nn.Layer or an ONNX model"):
        tracespec.record(np.zeros(3), tmp_path / "t")
