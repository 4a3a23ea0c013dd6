"""The PyTorch adapter: the shared suite, plus what only PyTorch has."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import tracespec
from tracespec.adapters._host import fast_stats
from tracespec.adapters.torch import cpu_stats, device_moments, numpy_view, stats_from_moments
from tracespec.format.stats import TensorStats, compute_stats
from tracespec.testing.adapter_tests import AdapterTests, ModelSpec, TraceView


# ------------------------------------------------------------------------------ the spec models
class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 16)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SelfAttention(nn.Module):
    def __init__(self, d: int = 8, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.drop = nn.Dropout(0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq, d = x.shape
        q, k, v = (t.reshape(batch, seq, self.heads, d // self.heads).transpose(1, 2) for t in self.qkv(x).split(d, dim=-1))
        mask = torch.triu(torch.full((seq, seq), -1e9), diagonal=1)
        probs = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // self.heads) + mask, dim=-1)
        context = (probs @ v).transpose(1, 2).reshape(batch, seq, d)
        return self.drop(self.proj(context))


class FeedForward(nn.Module):
    def __init__(self, d: int = 8) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d, 4 * d)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(4 * d, d)
        self.drop = nn.Dropout(0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.act(self.fc1(x))))


class Block(nn.Module):
    def __init__(self, d: int = 8) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d)
        self.attn = SelfAttention(d)
        self.ln2 = nn.LayerNorm(d)
        self.mlp = FeedForward(d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x + self.attn(self.ln1(x))
        return h + self.mlp(self.ln2(h))


class Head(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gate = nn.Linear(4, 4)

    def forward(self, h: torch.Tensor, mask: torch.Tensor, bias: torch.Tensor) -> dict[str, Any]:
        g = self.gate(h)
        return {"y": g * mask + bias, "parts": (g, h), "count": 2}


class Tricky(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 4)
        self.alias = self.proj
        self.head = Head()

    def forward(
        self, pair: tuple[torch.Tensor, dict[str, torch.Tensor]], scale: float, *, offset: torch.Tensor
    ) -> dict[str, Any]:
        x, aux = pair
        h = self.proj(x)
        h = self.alias(h * scale)
        return self.head(h, mask=aux["m"], bias=offset)  # type: ignore[no-any-return]


_CLASSES = {"mlp": MLP, "block": Block, "tricky": Tricky}


def build(spec: ModelSpec) -> nn.Module:
    model = _CLASSES[spec.name]()
    modules = dict(model.named_modules())
    with torch.no_grad():
        for key, value in spec.weights.items():
            route, _, name = key.rpartition(".")
            module = modules[route]
            array = value.T if isinstance(module, nn.Linear) and name == "weight" else value
            getattr(module, name).copy_(torch.from_numpy(np.ascontiguousarray(array)))
    return model


class TestTorchAdapter(AdapterTests):
    framework = "torch"
    linear_weight_layout = "out_in"

    def build(self, spec: ModelSpec) -> nn.Module:
        return build(spec)

    def seed(self, seed: int) -> None:
        torch.manual_seed(seed)

    def to_tensor(self, array: np.ndarray, requires_grad: bool = False) -> torch.Tensor:
        return torch.tensor(array, requires_grad=requires_grad)

    def to_numpy(self, tensor: Any) -> np.ndarray:
        return tensor.detach().numpy().copy()  # type: ignore[no-any-return]

    def is_tensor(self, value: Any) -> bool:
        return isinstance(value, torch.Tensor)

    def set_training(self, model: Any, training: bool) -> None:
        model.train(training)

    def backward(self, loss: Any) -> None:
        loss.backward()

    def input_grad(self, tensor: Any) -> np.ndarray | None:
        return None if tensor.grad is None else tensor.grad.numpy().copy()

    def parameters(self, model: Any) -> dict[str, Any]:
        return dict(model.named_parameters())

    def make_optimizer(self, model: Any) -> Any:
        return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

    def optimizer_step(self, optimizer: Any) -> None:
        optimizer.step()

    def clear_grads(self, optimizer: Any) -> None:
        optimizer.zero_grad()

    momentum_slot = "momentum_buffer"

    def sequential(self, *layers: Any) -> nn.Module:
        return nn.Sequential(*layers)

    def linear(self, n_in: int, n_out: int) -> nn.Module:
        return nn.Linear(n_in, n_out)

    def dropout(self, p: float) -> nn.Module:
        return nn.Dropout(p)

    def relu_in_place(self) -> nn.Module:
        return nn.ReLU(inplace=True)

    def square(self) -> nn.Module:
        return SquareModule()

    def no_grad(self) -> Any:
        return torch.no_grad()

    def framework_version(self) -> str:
        return torch.__version__

    def cast(self, dtype: str) -> nn.Module:
        return Cast(getattr(torch, dtype))

    def bits_of(self, tensor: Any) -> bytes:
        return bytes(tensor.view(torch.uint8).numpy().tobytes())

    def layer_norm(self, n: int) -> nn.Module:
        return nn.LayerNorm(n)

    def fan_out(self) -> nn.Module:
        return FanOut()

    def make_adam(self, model: Any) -> Any:
        return torch.optim.Adam(model.parameters(), lr=0.01)

    adam_slots = frozenset({"step", "exp_avg", "exp_avg_sq"})

    def adam_state(self, optimizer: Any, parameter: Any) -> dict[str, np.ndarray]:
        return {key: value.numpy() for key, value in optimizer.state[parameter].items()}

    def distributed_script(self, store: Path) -> str:
        return f"""
import os, sys, torch, torch.distributed as dist, tracespec
dist.init_process_group("gloo", init_method="file://{store}", rank=int(os.environ["RANK"]), world_size=2)
model = torch.nn.Linear(3, 2)
with tracespec.record(model, sys.argv[1]) as rec:
    model(torch.ones(1, 3)).sum().backward(); rec.step()
dist.destroy_process_group()
"""

    def distributed_env(self, rank: int) -> dict[str, str]:
        return {"RANK": str(rank), "PATH": "/usr/bin:/bin"}


# ------------------------------------------------------------------------------ torch only
def record_run(path: Path, model: nn.Module, x: torch.Tensor, steps: int = 1, **options: Any) -> list[torch.Tensor]:
    outputs = []
    with tracespec.record(model, path, **options) as rec:
        for _ in range(steps):
            out = model(x)
            out.sum().backward()
            outputs.append(out.detach().clone())
            rec.step()
    return outputs


class Square(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return 2 * x * grad


class SquareModule(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return Square.apply(x)  # type: ignore[no-any-return]


class Cast(nn.Module):
    def __init__(self, dtype: torch.dtype) -> None:
        super().__init__()
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.dtype)


class FanOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q, self.k, self.v = (nn.Linear(4, 4) for _ in range(3))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.q(h) @ self.k(h).T, dim=-1) @ self.v(h)


def test_shared_parameters_are_stored_once(tmp_path: Path) -> None:
    embed = nn.Embedding(10, 4)
    head = nn.Linear(4, 10, bias=False)
    head.weight = embed.weight  # tied, as GPT-2's lm_head
    model = nn.Sequential(embed, head)
    with tracespec.record(model, tmp_path / "t", capture="full") as rec:
        model(torch.tensor([[1, 2, 3]])).sum().backward()
        rec.step()
    view = TraceView(tmp_path / "t")
    params = view.records(role="parameter", stage="forward")
    assert [view.route_of[r["node"]] for r in params] == ["0", "1"]
    assert params[0]["array"] == params[1]["array"]
    assert view.one("0", role="input")["dtype"] == "int64"


@pytest.mark.parametrize(
    "values",
    [
        np.arange(1000, dtype=np.float32) / 7,
        np.full(300_000, 1e4, dtype=np.float32) + np.linspace(0, 1e-2, 300_000, dtype=np.float32),
        np.array([1.0, np.nan, -np.inf, 3.0, np.inf], dtype=np.float32),
        np.array([np.nan, np.nan], dtype=np.float32),
        np.zeros((0, 3), dtype=np.float32),
        np.arange(-5, 700_000, dtype=np.int64),
        np.array([True, False, True]),
        np.float64(3.5) * np.ones(()),
        (np.random.default_rng(0).standard_normal(600_000) * 1e30).astype(np.float64),
        np.random.default_rng(1).standard_normal((30, 40)).astype(np.float32)[:, ::3],
    ],
    ids=["f32", "cancellation", "nonfinite", "all-nan", "empty", "int64", "bool", "0-d", "huge-f64", "strided"],
)
def test_statistics_match_the_reference(values: np.ndarray) -> None:
    tensor = torch.from_numpy(values) if values.flags.writeable and values.ndim else torch.tensor(values)
    reference = compute_stats(values)
    for got in (cpu_stats(tensor), fast_stats(numpy_view(tensor)), stats_from_moments(device_moments(tensor).tolist())):
        assert_stats_match(got, reference)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
@pytest.mark.parametrize("case", ["normal", "offset", "nan", "large"])
def test_cpu_statistics_of_every_float_dtype_match_the_reference(dtype: torch.dtype, case: str) -> None:
    # sizes past one scratch block (2^20 elements), an offset that triggers the cancellation
    # fallback, a NaN that triggers the non-finite one
    generator = torch.Generator().manual_seed(3)
    values = torch.randn(2_500_003 if case == "large" else 10_001, generator=generator)
    if case == "offset":
        values += 300.0
    if case == "nan":
        values[17] = float("nan")
    tensor = values.to(dtype)
    reference = compute_stats(numpy_view(tensor))
    for got in (cpu_stats(tensor), fast_stats(numpy_view(tensor))):
        assert_stats_match(got, reference)


def assert_stats_match(got: TensorStats, reference: TensorStats) -> None:
    assert got.count == reference.count
    assert (got.nan_count, got.inf_count) == (reference.nan_count, reference.inf_count)
    for name in ("min", "max", "mean", "std", "l2"):
        expected = getattr(reference, name)
        assert (getattr(got, name) is None) == (expected is None), name
        if expected is not None:
            assert getattr(got, name) == pytest.approx(expected, rel=1e-9, abs=1e-300), name


def test_record_picks_the_torch_adapter_and_import_stays_framework_free() -> None:
    code = "import sys, tracespec, tracespec.cli; print(sorted({'torch','paddle','onnxruntime'} & set(sys.modules)))"
    assert subprocess.check_output([sys.executable, "-c", code], text=True).strip() == "[]"
    with pytest.raises(tracespec.errors.UsageError, match=r"installed adapters: .*torch.*pip install"):
        tracespec.record(object(), "unused")
