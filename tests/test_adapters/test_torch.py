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
from tracespec.format.stats import TensorStats, compute_stats, content_hash
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


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float8_e4m3fn])
def test_low_precision_dtypes_are_recorded_exactly(dtype: torch.dtype, tmp_path: Path) -> None:
    class Cast(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.to(dtype)

    x = torch.randn(4, 5)
    with tracespec.record(Cast(), tmp_path / "t", capture="full") as rec:
        out = Cast()(x)
        rec.step()
    model = Cast()
    with tracespec.record(model, tmp_path / "u", capture="full") as rec:
        out = model(x)
        rec.step()
    view = TraceView(tmp_path / "u")
    record = view.one("", role="output")
    assert record["dtype"] == str(dtype).removeprefix("torch.")
    got = view.array(record)
    assert got.view(np.uint8).tobytes() == out.view(torch.uint8).numpy().tobytes()
    assert record["hash"] == content_hash(got)
    assert record["mean"] == pytest.approx(float(out.double().mean()), rel=1e-9)


def test_torch_distributed_rank_is_picked_up(tmp_path: Path) -> None:
    script = f"""
import os, torch, torch.distributed as dist, tracespec
from torch import nn
rank = int(os.environ["RANK"])
dist.init_process_group("gloo", init_method="file://{tmp_path}/store", rank=rank, world_size=2)
model = nn.Linear(3, 2)
with tracespec.record(model, "{tmp_path}/t") as rec:
    model(torch.ones(1, 3)).sum().backward(); rec.step()
dist.destroy_process_group()
"""
    procs = [subprocess.Popen([sys.executable, "-c", script], env={"RANK": str(r), "PATH": "/usr/bin:/bin"}) for r in (0, 1)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    trace = tracespec.load_trace(tmp_path / "t")
    assert trace.ranks == [0, 1] and trace.manifest.world_size == 2 and trace.complete


def test_record_picks_the_torch_adapter_and_import_stays_framework_free() -> None:
    code = "import sys, tracespec, tracespec.cli; print(sorted({'torch','paddle','onnxruntime'} & set(sys.modules)))"
    assert subprocess.check_output([sys.executable, "-c", code], text=True).strip() == "[]"
    with pytest.raises(tracespec.errors.UsageError, match=r"installed adapters: .*torch.*pip install"):
        tracespec.record(object(), "unused")


def test_optimizer_hooks_record_grads_and_update_even_when_grads_are_cleared_first(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 1))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    x = torch.randn(4, 3)
    grads, weights = [], []
    with tracespec.record(model, tmp_path / "t", capture="full", optimizer=opt) as rec:
        for _ in range(2):
            model(x).sum().backward()
            grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
            opt.step()
            weights.append({n: p.detach().clone() for n, p in model.named_parameters()})
            opt.zero_grad()  # before rec.step(): the optimizer hooks already recorded them
            rec.step()
    view = TraceView(tmp_path / "t")
    for step in (0, 1):
        for role, stage, expected in (("parameter_grad", "backward", grads), ("parameter", "update", weights)):
            got = {
                f"{view.route_of[r['node']]}.{r['slot']}": view.array(r) for r in view.records(role=role, stage=stage, step=step)
            }
            assert got.keys() == expected[step].keys()
            for key, value in expected[step].items():
                np.testing.assert_array_equal(got[key], value.numpy(), err_msg=f"{role} {key}")
        state = {r["slot"]: view.array(r) for r in view.records("0", role="optimizer_state", step=step)}
        np.testing.assert_array_equal(
            state["weight.exp_avg"], opt.state[model[0].weight]["exp_avg"].numpy() if step == 1 else state["weight.exp_avg"]
        )
        assert set(state) == {
            "weight.step",
            "weight.exp_avg",
            "weight.exp_avg_sq",
            "bias.step",
            "bias.exp_avg",
            "bias.exp_avg_sq",
        }


def test_recording_keeps_no_step_alive(tmp_path: Path) -> None:
    # A gradient hook that referenced the tensor it sits on made a cycle through autograd that
    # Python's collector cannot see: every step's module inputs, and the recorder, stayed alive.
    import gc
    import weakref

    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    seen: list[weakref.ref[torch.Tensor]] = []
    model[2].register_forward_pre_hook(lambda module, args: seen.append(weakref.ref(args[0])))
    rec = tracespec.record(model, tmp_path / "t", capture="full")
    with rec:
        for _ in range(3):
            model(torch.randn(5, 8, requires_grad=True)).sum().backward()
            rec.step()
    recorder = weakref.ref(rec)
    del rec
    gc.collect()
    assert len(seen) == 3
    assert recorder() is None
    assert [ref() for ref in seen] == [None, None, None]
