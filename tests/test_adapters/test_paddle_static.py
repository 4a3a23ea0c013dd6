"""A Paddle layer converted with ``paddle.jit.to_static`` runs no forward hooks: recording refuses
it with one clear line before writing anything, and records it where to_static is switched off."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import paddle
import pytest

import tracespec
from tracespec.errors import UsageError


class Net(paddle.nn.Layer):
    def __init__(self) -> None:
        super().__init__()
        self.fc = paddle.nn.Linear(4, 4)
        self.act = paddle.nn.ReLU()

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.act(self.fc(x))


@pytest.fixture
def eager_static() -> Iterator[None]:
    paddle.jit.enable_to_static(False)
    yield
    paddle.jit.enable_to_static(True)


@pytest.mark.parametrize("where", ["root", "sublayer"])
def test_a_static_layer_is_refused_before_anything_is_written(tmp_path: Path, where: str) -> None:
    net = Net()
    if where == "root":
        net = paddle.jit.to_static(net)
    else:
        net.fc = paddle.jit.to_static(net.fc)
    with pytest.raises(UsageError, match="paddle.jit.to_static") as refused:
        tracespec.record(net, tmp_path / "trace")
    assert ("its layer 'fc'" in str(refused.value)) == (where == "sublayer")
    assert not (tmp_path / "trace").exists()


def test_a_static_layer_run_eagerly_is_recorded(tmp_path: Path, eager_static: None) -> None:
    paddle.seed(0)
    net = paddle.jit.to_static(Net())
    x = paddle.to_tensor(np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4))
    expected = net(x).numpy()
    with tracespec.record(net, tmp_path / "trace", capture="full") as rec:
        got = net(x).numpy()
        rec.step()
    np.testing.assert_array_equal(got, expected)
    trace = tracespec.load_trace(tmp_path / "trace")
    assert trace.complete and {"", "fc", "act"} <= set(trace.parts[0].nodes.column("route").to_pylist())
