"""Every kind of trace tracespec writes, read back by a reader written from the spec alone
(``minimal_reader``), which recomputes every statistic and hash and finds them as recorded."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import minimal_reader
import numpy as np
import onnx
import paddle
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from safetensors.numpy import save_file
from torch import nn

import tracespec
from tracespec.convert import convert_checkpoint, convert_padiff

PADIFF_CORPUS = Path(__file__).resolve().parents[1] / "data" / "padiff_corpus"


def torch_training(path: Path) -> None:
    """Several steps with an optimizer: every role, full capture."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 2))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    with tracespec.record(model, path, capture="full", optimizer=optimizer) as rec:
        for _ in range(3):
            model(torch.randn(5, 4)).square().mean().backward()
            optimizer.step()
            optimizer.zero_grad()
            rec.step()


class LowPrecision(nn.Module):
    """bfloat16 compute, and an output cast to each float8 type, with NaN and Inf among the values."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 6).to(torch.bfloat16)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        y = self.fc(x)
        special = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.5])
        return (y, *(torch.cat([y.float().reshape(-1), special]).to(t) for t in (torch.float8_e4m3fn, torch.float8_e5m2)))


def torch_low_precision(path: Path) -> None:
    torch.manual_seed(0)
    model = LowPrecision()
    with tracespec.record(model, path, capture="full") as rec:
        model(torch.randn(3, 6, dtype=torch.bfloat16))
        rec.step()


def torch_ops_and_stats(path: Path) -> None:
    """Op nodes (ops=True), at the default level (statistics only: nothing to recompute but shapes)
    and with full data for one module."""
    torch.manual_seed(0)
    model = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, batch_first=True).eval()
    with tracespec.record(model, path, ops=True, levels={"linear1": "full"}) as rec:
        model(torch.randn(2, 3, 8))
        rec.step()


def paddle_training(path: Path) -> None:
    paddle.seed(0)
    layer = paddle.nn.Sequential(paddle.nn.Linear(4, 8), paddle.nn.Tanh(), paddle.nn.Linear(8, 2))
    optimizer = paddle.optimizer.SGD(learning_rate=0.1, parameters=layer.parameters())
    with tracespec.record(layer, path, capture="full", optimizer=optimizer) as rec:
        for _ in range(2):
            layer(paddle.randn([5, 4])).square().mean().backward()
            optimizer.step()
            optimizer.clear_grad()
            rec.step()


def onnxruntime_run(path: Path) -> None:
    rng = np.random.default_rng(0)
    w, b = rng.standard_normal((4, 3)).astype(np.float32), rng.standard_normal(3).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["h"]),
            helper.make_node("Add", ["h", "b"], ["z"]),
            helper.make_node("Relu", ["z"], ["y"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    tracespec.record_onnx(model, {"x": rng.standard_normal((2, 4)).astype(np.float32)}, path, capture="full")


def padiff_conversion(path: Path) -> None:
    convert_padiff(PADIFF_CORPUS / "d_mlp_multistep_adam_freq1" / "padiff_dump" / "torch_mlp", path)


def checkpoint_conversion(path: Path) -> None:
    rng = np.random.default_rng(0)
    tensors = {
        "encoder.weight": rng.standard_normal((3, 4)).astype(np.float32),
        "encoder.bias": np.zeros(3, np.float16),
        "head.steps": np.arange(5, dtype=np.int64),
    }
    file = path.parent / f"{path.name}.safetensors"
    save_file(tensors, str(file))
    convert_checkpoint(file, path)


KINDS: dict[str, Callable[[Path], None]] = {
    "torch_training": torch_training,
    "torch_bf16_fp8": torch_low_precision,
    "torch_ops_stats": torch_ops_and_stats,
    "paddle_training": paddle_training,
    "onnxruntime": onnxruntime_run,
    "padiff": padiff_conversion,
    "checkpoint": checkpoint_conversion,
}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_a_spec_only_reader_recomputes_every_statistic_and_hash(kind: str, tmp_path: Path) -> None:
    path = tmp_path / kind
    KINDS[kind](path)
    checked = minimal_reader.check(path)
    assert checked > 0
    manifest, parts = minimal_reader.read(path)
    records = sum(len(part.tensors) for part in parts)
    assert records == tracespec.load_trace(path).tensors().num_rows  # it saw every part and segment
    assert manifest["world_size"] == len(parts)
