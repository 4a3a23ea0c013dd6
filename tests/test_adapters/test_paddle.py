"""The PaddlePaddle adapter: the shared suite, plus what only Paddle has."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import paddle
import paddle.nn.functional as F
import pytest
from paddle import nn

import tracespec
from tracespec.adapters._host import fast_stats
from tracespec.adapters.paddle import host_array
from tracespec.format.stats import compute_stats
from tracespec.testing.adapter_tests import AdapterTests, ModelSpec, TraceView


# ------------------------------------------------------------------------------ the spec models
class MLP(nn.Layer):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 16)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(16, 4)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SelfAttention(nn.Layer):
    def __init__(self, d: int = 8, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.drop = nn.Dropout(0.1)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        batch, seq, d = x.shape
        head = d // self.heads
        q, k, v = (
            t.reshape([batch, seq, self.heads, head]).transpose([0, 2, 1, 3]) for t in paddle.split(self.qkv(x), 3, axis=-1)
        )
        mask = paddle.triu(paddle.full([seq, seq], -1e9), diagonal=1)
        probs = F.softmax(q @ k.transpose([0, 1, 3, 2]) / head**0.5 + mask, axis=-1)
        context = (probs @ v).transpose([0, 2, 1, 3]).reshape([batch, seq, d])
        return self.drop(self.proj(context))


class FeedForward(nn.Layer):
    def __init__(self, d: int = 8) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d, 4 * d)
        self.act = nn.GELU(approximate=True)
        self.fc2 = nn.Linear(4 * d, d)
        self.drop = nn.Dropout(0.1)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.drop(self.fc2(self.act(self.fc1(x))))


class Block(nn.Layer):
    def __init__(self, d: int = 8) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d)
        self.attn = SelfAttention(d)
        self.ln2 = nn.LayerNorm(d)
        self.mlp = FeedForward(d)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        h = x + self.attn(self.ln1(x))
        return h + self.mlp(self.ln2(h))


class Head(nn.Layer):
    def __init__(self) -> None:
        super().__init__()
        self.gate = nn.Linear(4, 4)

    def forward(self, h: paddle.Tensor, mask: paddle.Tensor, bias: paddle.Tensor) -> dict[str, Any]:
        g = self.gate(h)
        return {"y": g * mask + bias, "parts": (g, h), "count": 2}


class Tricky(nn.Layer):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 4)
        self.alias = self.proj
        self.head = Head()

    def forward(
        self, pair: tuple[paddle.Tensor, dict[str, paddle.Tensor]], scale: float, *, offset: paddle.Tensor
    ) -> dict[str, Any]:
        x, aux = pair
        h = self.proj(x)
        h = self.alias(h * scale)
        return self.head(h, mask=aux["m"], bias=offset)  # type: ignore[no-any-return]


_CLASSES = {"mlp": MLP, "block": Block, "tricky": Tricky}


def build(spec: ModelSpec) -> nn.Layer:
    """The spec's model in Paddle; spec weights are ``[in, out]``, Paddle's own Linear layout."""
    model = _CLASSES[spec.name]()
    layers = dict(model.named_sublayers(include_self=True))
    for key, value in spec.weights.items():
        route, _, name = key.rpartition(".")
        getattr(layers[route], name).set_value(value)
    return model


class TestPaddleAdapter(AdapterTests):
    framework = "paddle"
    linear_weight_layout = "in_out"

    def build(self, spec: ModelSpec) -> nn.Layer:
        return build(spec)

    def seed(self, seed: int) -> None:
        paddle.seed(seed)

    def to_tensor(self, array: np.ndarray, requires_grad: bool = False) -> paddle.Tensor:
        return paddle.to_tensor(array, stop_gradient=not requires_grad)

    def to_numpy(self, tensor: Any) -> np.ndarray:
        return host_array(tensor).copy()

    def is_tensor(self, value: Any) -> bool:
        return isinstance(value, paddle.Tensor)

    def set_training(self, model: Any, training: bool) -> None:
        model.train() if training else model.eval()

    def backward(self, loss: Any) -> None:
        loss.backward()

    def input_grad(self, tensor: Any) -> np.ndarray | None:
        return None if tensor.grad is None else self.to_numpy(tensor.grad)

    def parameters(self, model: Any) -> dict[str, Any]:
        return dict(model.named_parameters())

    def make_optimizer(self, model: Any) -> Any:
        return paddle.optimizer.Momentum(learning_rate=0.1, momentum=0.9, parameters=model.parameters())

    def optimizer_step(self, optimizer: Any) -> None:
        optimizer.step()

    def clear_grads(self, optimizer: Any) -> None:
        optimizer.clear_grad()

    momentum_slot = "velocity"

    def sequential(self, *layers: Any) -> nn.Layer:
        return nn.Sequential(*layers)

    def linear(self, n_in: int, n_out: int) -> nn.Layer:
        return nn.Linear(n_in, n_out)

    def dropout(self, p: float) -> nn.Layer:
        return nn.Dropout(p)

    def relu_in_place(self) -> nn.Layer:
        return ReluInPlace()

    def square(self) -> nn.Layer:
        return SquareLayer()

    def no_grad(self) -> Any:
        return paddle.no_grad()

    def framework_version(self) -> str:
        return str(paddle.__version__)

    def cast(self, dtype: str) -> nn.Layer:
        return Cast(dtype)

    def bits_of(self, tensor: Any) -> bytes:
        return bits_of(tensor)

    def layer_norm(self, n: int) -> nn.Layer:
        return nn.LayerNorm(n)

    def fan_out(self) -> nn.Layer:
        return FanOut()

    def make_adam(self, model: Any) -> Any:
        return paddle.optimizer.Adam(learning_rate=0.01, parameters=model.parameters())

    adam_slots = frozenset({"moment1", "moment2", "beta1_pow_acc", "beta2_pow_acc"})

    def adam_state(self, optimizer: Any, parameter: Any) -> dict[str, np.ndarray]:
        # Paddle keeps it per accumulator, keyed by the parameter's name (``linear_0.w_0``).
        return {key: values[parameter.name].numpy() for key, values in optimizer._accumulators.items()}

    def distributed_script(self, store: Path) -> str:
        # get_world_size/get_rank read the launcher's environment: no init_parallel_env() needed.
        return """
import sys, warnings; warnings.simplefilter("ignore")
import paddle, tracespec
model = paddle.nn.Linear(3, 2)
with tracespec.record(model, sys.argv[1]) as rec:
    model(paddle.ones([1, 3])).sum().backward(); rec.step()
"""

    def distributed_env(self, rank: int) -> dict[str, str]:
        # What `python -m paddle.distributed.launch` sets for each process it starts.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PADDLE_")}
        return {**env, "PADDLE_TRAINER_ID": str(rank), "PADDLE_TRAINERS_NUM": "2", "PADDLE_RANK_IN_NODE": str(rank)}


# ------------------------------------------------------------------------------ paddle only
class Cast(nn.Layer):
    def __init__(self, dtype: str) -> None:
        super().__init__()
        self.dtype_name = dtype

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return x.astype(self.dtype_name)


def bits_of(tensor: paddle.Tensor) -> bytes:
    """The raw bytes of a tensor, taken by Paddle itself (numpy() gives bf16/fp8 as integers)."""
    return tensor.numpy().tobytes()


class Scale(nn.Layer):
    """One multiply: CPU Paddle has few bfloat16 kernels (no matmul, no add)."""

    def __init__(self, shape: list[int]) -> None:
        super().__init__()
        self.weight = self.create_parameter(shape, default_initializer=nn.initializer.Normal())

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return x * self.weight


def test_bfloat16_gradients_and_parameters_are_recorded_exactly(tmp_path: Path) -> None:
    paddle.seed(3)
    model = Scale([2, 4])
    model.to(dtype="bfloat16")
    x = paddle.randn([2, 4]).astype("bfloat16")
    x.stop_gradient = False
    with tracespec.record(model, tmp_path / "t", capture="full") as rec:
        out = model(x)
        (out.astype("float32") * paddle.to_tensor(np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4))).sum().backward()
        rec.step()
    view = TraceView(tmp_path / "t")
    weight = view.one("", role="parameter", slot="weight")
    assert weight["dtype"] == "bfloat16" and weight["shape"] == [2, 4]
    assert view.array(weight).tobytes() == bits_of(model.weight)
    for role, tensor in (("output", out), ("grad_input", x.grad)):
        record = view.one("", role=role, slot="0")
        assert record["dtype"] == "bfloat16" and view.array(record).dtype == ml_dtypes.bfloat16
        assert view.array(record).tobytes() == bits_of(tensor), role
    grad = view.one("", role="parameter_grad", slot="weight")
    assert grad["dtype"] == "bfloat16" and view.array(grad).tobytes() == bits_of(model.weight.grad)


def test_linear_weight_keeps_paddle_layout_with_class_and_name(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(6, 3))
    with tracespec.record(model, tmp_path / "t", capture="full") as rec:
        model(paddle.randn([2, 6])).sum().backward()
        rec.step()
    view = TraceView(tmp_path / "t")
    weight = view.one("0", role="parameter", slot="weight")
    assert weight["shape"] == [6, 3], "Paddle's [in, out], not transposed"
    node = next(n for n in view.nodes if n["route"] == "0")
    assert node["class_name"] == "Linear" and "paddle.nn" in node["attrs"]
    np.testing.assert_array_equal(view.array(weight), model[0].weight.numpy())
    np.testing.assert_array_equal(view.array(view.one("0", role="parameter_grad", slot="weight")), model[0].weight.grad.numpy())


class ReluInPlace(nn.Layer):
    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return F.relu_(x)


class Square(paddle.autograd.PyLayer):
    @staticmethod
    def forward(ctx: Any, x: paddle.Tensor) -> paddle.Tensor:
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx: Any, grad: paddle.Tensor) -> paddle.Tensor:
        (x,) = ctx.saved_tensor()
        return 2 * x * grad


class SquareLayer(nn.Layer):
    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return Square.apply(x)  # type: ignore[no-any-return]


class FanOut(nn.Layer):
    def __init__(self) -> None:
        super().__init__()
        self.q, self.k, self.v = (nn.Linear(4, 4) for _ in range(3))

    def forward(self, h: paddle.Tensor) -> paddle.Tensor:
        return F.softmax(paddle.matmul(self.q(h), self.k(h), transpose_y=True), axis=-1) @ self.v(h)


@pytest.mark.filterwarnings("ignore:When training, we now always track global mean and variance")
def test_batchnorm_running_statistics_are_recorded_as_paddle_keeps_them(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1D(4))
    model.train()
    with tracespec.record(model, tmp_path / "t", capture="full") as rec:
        model(paddle.randn([8, 3])).sum().backward()
        rec.step()
    view = TraceView(tmp_path / "t")
    slots = {r["slot"] for r in view.records("1", stage="forward", role="parameter")}
    # Paddle keeps the running mean and variance as non-trainable parameters, not buffers.
    assert slots == {"weight", "bias", "_mean", "_variance"}
    grads = {r["slot"] for r in view.records("1", role="parameter_grad")}
    assert grads == {"weight", "bias"}


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16", "float8_e4m3fn", "int64", "bool"])
def test_statistics_of_paddle_tensors_match_the_reference(dtype: str) -> None:
    # What host_array hands to the statistics: DLPack views (here strided), or ml_dtypes bits.
    base = paddle.to_tensor(np.random.default_rng(1).standard_normal((300, 70)).astype(np.float32) * 4)
    tensor = base.astype(dtype).transpose([1, 0])
    array = host_array(tensor)
    reference = compute_stats(np.ascontiguousarray(array))
    got = fast_stats(array)
    assert (got.count, got.nan_count, got.inf_count) == (reference.count, reference.nan_count, reference.inf_count)
    for name in ("min", "max", "mean", "std", "l2"):
        assert getattr(got, name) == pytest.approx(getattr(reference, name), rel=1e-9, abs=1e-300), name


def test_host_array_shares_memory_on_cpu_and_keeps_bits() -> None:
    x = paddle.randn([3, 4])
    x.stop_gradient = False
    view = host_array(x)
    assert view.ctypes.data == x.data_ptr(), "no copy for a CPU float tensor"
    assert host_array(x.transpose([1, 0])).tobytes() == x.numpy().T.tobytes()
    bf = x.astype("bfloat16")
    assert host_array(bf).dtype == ml_dtypes.bfloat16
    assert host_array(bf).view(np.uint16).tobytes() == bf.numpy().tobytes()
