"""Recording the functional ops inside modules (``ops=``): PyTorch through a TorchFunctionMode,
Paddle by wrapping its public functions; nodes, calls, values, source lines, no observer effect."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import paddle
import paddle.nn.functional as PF
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import tracespec
from tracespec.adapters.paddle import OP_FUNCTIONS
from tracespec.errors import UsageError
from tracespec.testing.adapter_tests import TraceView

HERE = Path(__file__).read_text().splitlines()


def line_of(marker: str) -> int:
    """The line of this file holding ``marker`` (once): where an op is called from."""
    found = [i for i, text in enumerate(HERE, start=1) if marker in text and "line_of(" not in text]
    assert len(found) == 1, (marker, found)
    return found[0]


class Attention(nn.Module):
    """Functional attention with views, an in-place op, a property op and a setitem."""

    def __init__(self, d: int = 8, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=-1)
        q, k, v = (z.view(b, t, self.heads, -1).transpose(1, 2) for z in (q, k, v))
        scores = q @ k.mT * (1.0 / math.sqrt(k.size(-1)))  # op: scores
        scores = scores.masked_fill(mask == 0, float("-inf"))  # op: mask
        weights = F.softmax(scores, dim=-1)  # op: softmax
        y = (weights @ v).transpose(1, 2).reshape(b, t, d)
        y = y.clone()
        y[:, 0] = 0.0  # op: setitem
        y.add_(x)  # op: in place
        return self.proj(y)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = Attention()
        self.act = nn.GELU()
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.attn(x, mask))) * 2.0  # op: root


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(2, 4, 8, generator=torch.Generator().manual_seed(1))
    return x, torch.tril(torch.ones(4, 4))


def _run(model: nn.Module, path: Path | None, **options: Any) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """One training step: the output and the parameter gradients, recorded into ``path`` if given."""
    x, mask = _inputs()
    model.zero_grad()
    if path is None:
        out = model(x, mask)
        out.square().mean().backward()
    else:
        with tracespec.record(model, path, **options) as rec:
            out = model(x, mask)
            out.square().mean().backward()
            rec.step()
    return out.detach(), [p.grad.clone() for p in model.parameters()]


@pytest.fixture(scope="module")
def model() -> Net:
    torch.manual_seed(0)
    return Net()


@pytest.fixture(scope="module")
def full(model: Net, tmp_path_factory: pytest.TempPathFactory) -> TraceView:
    path = tmp_path_factory.mktemp("ops") / "full"
    _run(model, path, capture="full", ops=True)
    return TraceView(path)


@pytest.mark.parametrize("capture", ["full", "stats", "hash"])
def test_results_are_bit_identical_with_ops_recorded(model: Net, capture: str, tmp_path: Path) -> None:
    bare_out, bare_grads = _run(model, None)
    out, grads = _run(model, tmp_path / "t", capture=capture, ops=True)
    assert torch.equal(out, bare_out)
    assert all(torch.equal(g, h) for g, h in zip(grads, bare_grads, strict=True))


def test_ops_are_nodes_under_the_module_whose_code_calls_them(full: TraceView) -> None:
    by_route = {n["route"]: n for n in full.nodes}
    attn_ops = [n["route"] for n in full.nodes if n["kind"] == "op" and n["parent"] == by_route["attn"]["node"]]
    assert attn_ops == [
        "attn.split#0",
        "attn.view#0",
        "attn.transpose#0",
        "attn.view#1",
        "attn.transpose#1",
        "attn.view#2",
        "attn.transpose#2",
        "attn.mT#0",
        "attn.matmul#0",
        "attn.mul#0",
        "attn.eq#0",
        "attn.masked_fill#0",
        "attn.softmax#0",
        "attn.matmul#1",
        "attn.transpose#3",
        "attn.reshape#0",
        "attn.clone#0",
        "attn.setitem#0",
        "attn.add_#0",
    ]
    # torch's own modules are recorded as modules, not as the functional call inside them
    assert not [
        n for n in full.nodes if n["kind"] == "op" and n["parent"] in (by_route["attn.qkv"]["node"], by_route["act"]["node"])
    ]
    # the op in the root's forward; the loss computed outside any module is not recorded
    assert [n["route"] for n in full.nodes if n["kind"] == "op" and n["parent"] == by_route[""]["node"]] == ["mul#0"]
    mul = by_route["attn.mul#0"]
    assert mul["class_name"] == "mul" and mul["position"] > by_route["attn.proj"]["position"]
    assert json.loads(mul["attrs"]) == {
        "op": "torch.Tensor.mul",
        "source": {"file": __file__, "line": line_of("# op: scores"), "function": "forward"},
    }
    softmax = json.loads(by_route["attn.softmax#0"]["attrs"])
    assert softmax["op"] == "torch.nn.functional.softmax" and softmax["source"]["line"] == line_of("# op: softmax")
    assert json.loads(by_route["attn.setitem#0"]["attrs"])["source"]["line"] == line_of("# op: setitem")


def test_op_calls_nest_in_their_module_call(full: TraceView) -> None:
    attn = full.calls_of("attn", "forward")[0]
    for route in ("attn.view#0", "attn.softmax#0", "attn.add_#0"):
        call = full.calls_of(route, "forward")[0]
        assert attn["begin"] < call["begin"] < call["end"] < attn["end"]
    assert full.calls_of("attn.qkv", "forward")[0]["end"] < full.calls_of("attn.split#0", "forward")[0]["begin"]


def test_op_values_are_what_the_code_computed(model: Net, full: TraceView) -> None:
    x, _mask = _inputs()
    with torch.no_grad():
        q, k, _ = model.attn.qkv(x).split(8, dim=-1)
        q, k = (z.view(2, 4, 2, -1).transpose(1, 2) for z in (q, k))
        scores = q @ k.mT / math.sqrt(4)
    np.testing.assert_allclose(full.array(full.one("attn.mul#0", role="output")), scores.numpy(), rtol=1e-6, atol=1e-6)
    masked = full.array(full.one("attn.masked_fill#0", role="output"))
    assert np.isneginf(masked).sum() == 2 * 2 * 6
    # in place: the input as it was before the op, the output as it is after
    before = full.array(full.one("attn.add_#0", role="input", slot="0"))
    after = full.array(full.one("attn.add_#0", role="output"))
    np.testing.assert_array_equal(after, before + x.numpy())
    assert (before[:, 0] == 0).all()  # what setitem left


def test_op_gradients_are_recorded(model: Net, full: TraceView) -> None:
    out = full.array(full.one("mul#0", role="output"))
    grad = full.array(full.one("mul#0", role="grad_output"))
    np.testing.assert_allclose(grad, 2 * out / out.size, rtol=1e-6)  # d mean(y^2) / dy
    backward = full.calls_of("attn.softmax#0", "backward")
    assert len(backward) == 1 and full.records("attn.softmax#0", role="grad_input")


def test_ops_selects_the_modules_whose_code_is_recorded(model: Net, tmp_path: Path) -> None:
    _run(model, tmp_path / "sel", ops=["attn"])
    view = TraceView(tmp_path / "sel")
    parents = {view.route_of[n["parent"]] for n in view.nodes if n["kind"] == "op"}
    assert parents == {"attn"}
    assert view.trace.manifest.capture["ops"] == ["attn"]
    _run(model, tmp_path / "none")
    view = TraceView(tmp_path / "none")
    assert not [n for n in view.nodes if n["kind"] == "op"] and view.trace.manifest.capture["ops"] is None


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_ops_of_a_compiled_model_are_refused(tmp_path: Path) -> None:
    wrapped = torch.compile(Net())
    in_place = Net()
    in_place.compile()
    for compiled in (wrapped, in_place):
        with pytest.raises(UsageError, match="ops= records the functional code of an eager model"):
            tracespec.record(compiled, tmp_path / "c", ops=True)
    tracespec.record(wrapped, tmp_path / "c2")  # without ops it is accepted


# ------------------------------------------------------------------------------------ Paddle
class PaddleAttention(paddle.nn.Layer):
    def __init__(self) -> None:
        super().__init__()
        self.qkv = paddle.nn.Linear(8, 24)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        q, k, v = self.qkv(x).split(3, axis=-1)
        scores = paddle.matmul(q, k, transpose_y=True) * 0.5  # paddle op: scores
        weights = PF.softmax(scores, axis=-1)  # paddle op: softmax
        y = weights @ v + x.T.T  # paddle op: out
        y[:, 0] = 0.0
        return y


def _paddle_run(path: Path | None, **options: Any) -> tuple[np.ndarray, np.ndarray]:
    paddle.seed(0)
    layer = PaddleAttention()
    x = paddle.to_tensor(np.linspace(-1, 1, 32, dtype=np.float32).reshape(4, 8), stop_gradient=False)
    if path is None:
        out = layer(x)
        out.square().mean().backward()
    else:
        with tracespec.record(layer, path, **options) as rec:
            out = layer(x)
            out.square().mean().backward()
            rec.step()
    return out.numpy(), layer.qkv.weight.grad.numpy()


def test_paddle_ops_are_recorded_and_change_nothing(tmp_path: Path) -> None:
    originals = (paddle.matmul, PF.softmax, paddle.Tensor.__mul__, paddle.Tensor.__dict__["T"])
    bare = _paddle_run(None)
    recorded = _paddle_run(tmp_path / "p", capture="full", ops=True)
    for got, want in zip(recorded, bare, strict=True):
        np.testing.assert_array_equal(got, want)
    # the wrapped functions are back once the recording ends
    assert (paddle.matmul, PF.softmax, paddle.Tensor.__mul__, paddle.Tensor.__dict__["T"]) == originals
    view = TraceView(tmp_path / "p")
    by_route = {n["route"]: n for n in view.nodes}
    ops = [n["route"] for n in view.nodes if n["kind"] == "op"]
    assert ops == ["split#0", "matmul#0", "mul#0", "softmax#0", "matmul#1", "T#0", "T#1", "add#0", "setitem#0"]
    assert json.loads(by_route["matmul#0"]["attrs"]) == {
        "op": "paddle.matmul",
        "source": {"file": __file__, "line": line_of("# paddle op: scores"), "function": "forward"},
    }
    assert json.loads(by_route["softmax#0"]["attrs"])["op"] == "paddle.nn.functional.softmax"
    assert view.records("softmax#0", role="grad_output")


def test_paddle_functions_are_restored_when_the_recorded_code_raises(tmp_path: Path) -> None:
    originals = {name: paddle.Tensor.__dict__.get(name) for name in OP_FUNCTIONS["paddle.Tensor"]}
    layer = paddle.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="boom"), tracespec.record(layer, tmp_path / "p", ops=True):
        layer(paddle.ones([1, 2]))
        raise ValueError("boom")
    assert {name: paddle.Tensor.__dict__.get(name) for name in OP_FUNCTIONS["paddle.Tensor"]} == originals
    assert paddle.matmul.__module__.startswith("paddle")


def test_show_says_where_each_op_is_called(full: TraceView) -> None:
    from click.testing import CliRunner

    from tracespec.cli import cli

    result = CliRunner().invoke(cli, ["show", str(full.trace.path), "--role", "output"])
    assert result.exit_code == 0, result.output
    assert f"attn.mul#0 mul  at test_ops.py:{line_of('# op: scores')}" in result.output
    assert "attn.qkv Linear\n" in result.output  # a module: no source line
