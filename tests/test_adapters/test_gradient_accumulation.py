"""A layer that feeds its input to several sublayers: its grad_input is the sum of all of them.

Autograd engines may accumulate those contributions into the buffer of the first one, in place
(Paddle does), so a gradient must never be deduplicated against a partial contribution that
happened to live at the same address.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import tracespec


def _grad_input(trace_path: Path, route: str) -> np.ndarray:
    trace = tracespec.load_trace(trace_path)
    part = trace.parts[0]
    node = next(n["node"] for n in part.nodes.to_pylist() if n["route"] == route)
    (record,) = [r for r in part.tensors.to_pylist() if r["node"] == node and r["role"] == "grad_input"]
    return trace.read(0, record["array"])


def test_paddle_grad_input_sums_every_use(tmp_path: Path) -> None:
    paddle = pytest.importorskip("paddle")  # installed in CI: this never skips there
    paddle.seed(0)

    class Attention(paddle.nn.Layer):
        def __init__(self) -> None:
            super().__init__()
            self.q, self.k, self.v = (paddle.nn.Linear(4, 4) for _ in range(3))

        def forward(self, h: paddle.Tensor) -> paddle.Tensor:
            scores = paddle.nn.functional.softmax(paddle.matmul(self.q(h), self.k(h), transpose_y=True), axis=-1)
            return paddle.matmul(scores, self.v(h))

    class Model(paddle.nn.Layer):
        def __init__(self) -> None:
            super().__init__()
            self.ln, self.att = paddle.nn.LayerNorm(4), Attention()

        def forward(self, x: paddle.Tensor) -> paddle.Tensor:
            return x + self.att(self.ln(x))

    model = Model()
    x = paddle.randn([2, 4])
    with tracespec.record(model, tmp_path / "t", capture="full") as rec:
        (model(x) ** 2).sum().backward()
        rec.step()

    h = model.ln(x)
    h.stop_gradient = False
    expected = paddle.grad((x + model.att(h)).pow(2).sum(), h)[0].numpy()
    np.testing.assert_allclose(_grad_input(tmp_path / "t", "att"), expected, rtol=1e-6, atol=1e-6)


def test_torch_grad_input_sums_every_use(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)

    class Attention(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.q, self.k, self.v = (torch.nn.Linear(4, 4) for _ in range(3))

        def forward(self, h: torch.Tensor) -> torch.Tensor:
            scores = torch.softmax(self.q(h) @ self.k(h).T, dim=-1)
            return scores @ self.v(h)

    class Model(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ln, self.att = torch.nn.LayerNorm(4), Attention()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.att(self.ln(x))

    model = Model()
    x = torch.randn(2, 4)
    with tracespec.record(model, tmp_path / "t", capture="full") as rec:
        (model(x) ** 2).sum().backward()
        rec.step()

    h = model.ln(x).detach().requires_grad_()
    (expected,) = torch.autograd.grad((x + model.att(h)).pow(2).sum(), h)
    np.testing.assert_allclose(_grad_input(tmp_path / "t", "att"), expected.numpy(), rtol=1e-6, atol=1e-6)
