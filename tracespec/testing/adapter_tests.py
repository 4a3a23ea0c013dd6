"""The test suite every framework adapter must pass: subclass :class:`AdapterTests`.

The models are written once, here, as :class:`ModelSpec` values: numpy weights, the module tree
every framework must produce (routes and class names), and a numpy reference of the forward
pass. A subclass builds the same model in its framework from the spec and provides a handful of
tensor operations; the tests are then the same for every framework.

Implementing an adapter's tests (``tests/test_adapters/test_<framework>.py``)::

    class TestTorchAdapter(AdapterTests):
        framework = "torch"
        linear_weight_layout = "out_in"       # how the framework stores Linear.weight
        def build(self, spec): ...            # the spec's model, weights loaded, train mode
        def seed(self, seed): ...             # seed the framework RNG (dropout)
        def to_tensor(self, array, requires_grad=False): ...
        def to_numpy(self, tensor): ...
        def is_tensor(self, value): ...
        def set_training(self, model, training): ...
        def backward(self, loss): ...
        def input_grad(self, tensor): ...     # .grad of a leaf input, as numpy (None if none)
        def parameters(self, model): ...      # {"fc1.weight": tensor, ...} (named_parameters)
        def make_optimizer(self, model): ...  # SGD with momentum 0.9, lr 0.1 (has state)
        def optimizer_step(self, optimizer): ...  # optimizer.step()
        def clear_grads(self, optimizer): ...     # zero_grad() / clear_grad()
        def sequential(self, *layers): ...    # nn.Sequential of the layers below
        def linear(self, n_in, n_out): ...
        def dropout(self, p): ...
        def relu_in_place(self): ...          # a layer whose ReLU overwrites its input
        def square(self): ...                 # x * x through a custom autograd function
        def no_grad(self): ...                # the framework's no-grad context
        momentum_slot = "momentum_buffer"     # make_optimizer's state slot of a parameter
        def framework_version(self): ...      # what the manifest records
        def cast(self, dtype): ...            # a layer returning its input cast to dtype
        def bits_of(self, tensor): ...        # the tensor's raw bytes, taken by the framework
        def layer_norm(self, n): ...
        def fan_out(self): ...                # softmax(q(h) @ k(h)^T) @ v(h), Linear(4, 4) each
        def make_adam(self, model): ...       # Adam, lr 0.01
        adam_slots = {"step", "exp_avg", "exp_avg_sq"}  # its state slots of a parameter
        def adam_state(self, optimizer, parameter): ...  # {slot: numpy}, as the optimizer keeps it
        def distributed_script(self, store): ...  # joins a 2-process job, records into sys.argv[1]
        def distributed_env(self, rank): ...  # what the framework's launcher sets for a rank

The model classes a ``build`` must produce (class names matter: they are recorded):

- ``mlp``: ``MLP`` with ``fc1`` Linear(6, 16) -> ``act`` ReLU -> ``fc2`` Linear(16, 4).
- ``block``: a pre-norm transformer block ``Block``: ``h = x + attn(ln1(x))``,
  ``out = h + mlp(ln2(h))``. ``ln1``/``ln2`` LayerNorm(8, eps 1e-5). ``attn`` is
  ``SelfAttention``: ``qkv`` Linear(8, 24) split along the last axis into q, k, v; 2 heads of 4;
  scores ``q @ k^T / 2 + mask`` with ``mask`` 0 on and below the diagonal and -1e9 above;
  softmax over the last axis; context back to ``[batch, seq, 8]``; ``proj`` Linear(8, 8) then
  ``drop`` Dropout(0.1). ``mlp`` is ``FeedForward``: ``fc1`` Linear(8, 32), ``act`` GELU with the
  tanh approximation, ``fc2`` Linear(32, 8), ``drop`` Dropout(0.1).
- ``tricky``: ``Tricky`` with ``proj`` Linear(4, 4), the *same* module also registered as
  ``alias``, and ``head`` a ``Head`` with ``gate`` Linear(4, 4)::

      Tricky.forward(pair, scale, *, offset):       # pair = (x, {"m": mask}); scale a float
          x, aux = pair
          h = self.proj(x)
          h = self.alias(h * scale)                 # the same module, called a second time
          return self.head(h, mask=aux["m"], bias=offset)
      Head.forward(h, mask, bias):
          g = self.gate(h)
          return {"y": g * mask + bias, "parts": (g, h), "count": 2}

Spec weights are in math layout: a Linear weight ``W`` is ``[in, out]`` with ``y = x @ W + b``;
a framework storing ``[out, in]`` transposes it when building.
"""

from __future__ import annotations

import gc
import math
import subprocess
import sys
import warnings
import weakref
from abc import ABC, abstractmethod
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

import tracespec
from tracespec.adapters._common import CaptureBudgetWarning, Recorder
from tracespec.adapters._slots import flatten
from tracespec.errors import UsageError
from tracespec.format.dtypes import numpy_dtype
from tracespec.format.stats import compute_stats, content_hash

__all__ = ["SPECS", "AdapterTests", "ModelSpec", "RunResult", "TraceView", "tree_shape"]


# ---------------------------------------------------------------------------------- model specs
@dataclass(frozen=True)
class ModelSpec:
    """One test model, framework-free: weights, expected tree, inputs and a numpy reference."""

    name: str
    weights: dict[str, np.ndarray]
    """``"route.param"`` -> array; Linear weights in math layout ``[in, out]``."""
    tree: tuple[tuple[str, str, str | None], ...]
    """``(route, class_name, parent_route)`` of every node, in pre-order."""
    make_inputs: Callable[[np.random.Generator], tuple[tuple[Any, ...], dict[str, Any]]]
    """Positional and keyword inputs, as (nested) numpy arrays and plain Python values."""
    grad_inputs: tuple[str, ...]
    """Root input slots whose tensors require grad."""
    reference: Callable[[ModelSpec, tuple[Any, ...], dict[str, Any]], dict[str, list[Any]]]
    """Numpy forward (eval mode): route -> the output of each call, in call order."""
    description: str = ""

    def linear(self, route: str) -> tuple[np.ndarray, np.ndarray]:
        return self.weights[f"{route}.weight"], self.weights[f"{route}.bias"]


def _w(rng: np.random.Generator, *shape: int, scale: float = 0.5) -> np.ndarray:
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def _linear(x: np.ndarray, wb: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    w, b = wb
    y: np.ndarray = (x.astype(np.float64) @ w.astype(np.float64) + b).astype(np.float32)
    return y


def _layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    x64 = x.astype(np.float64)
    mean = x64.mean(-1, keepdims=True)
    var = x64.var(-1, keepdims=True)
    y: np.ndarray = ((x64 - mean) / np.sqrt(var + 1e-5) * w + b).astype(np.float32)
    return y


def _gelu_tanh(x: np.ndarray) -> np.ndarray:
    x64 = x.astype(np.float64)
    y: np.ndarray = (0.5 * x64 * (1 + np.tanh(math.sqrt(2 / math.pi) * (x64 + 0.044715 * x64**3)))).astype(np.float32)
    return y


def _mlp_spec() -> ModelSpec:
    rng = np.random.default_rng(1)
    weights = {"fc1.weight": _w(rng, 6, 16), "fc1.bias": _w(rng, 16), "fc2.weight": _w(rng, 16, 4), "fc2.bias": _w(rng, 4)}

    def reference(spec: ModelSpec, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, list[Any]]:
        h1 = _linear(args[0], spec.linear("fc1"))
        a = np.maximum(h1, 0)
        out = _linear(a, spec.linear("fc2"))
        return {"": [out], "fc1": [h1], "act": [a], "fc2": [out]}

    return ModelSpec(
        "mlp",
        weights,
        (("", "MLP", None), ("fc1", "Linear", ""), ("act", "ReLU", ""), ("fc2", "Linear", "")),
        lambda rng: ((rng.standard_normal((3, 6)).astype(np.float32),), {}),
        ("0",),
        reference,
        "Linear(6,16) -> ReLU -> Linear(16,4)",
    )


def _block_spec() -> ModelSpec:
    rng = np.random.default_rng(2)
    d = 8
    weights = {
        "ln1.weight": 1 + _w(rng, d, scale=0.1),
        "ln1.bias": _w(rng, d, scale=0.1),
        "attn.qkv.weight": _w(rng, d, 3 * d),
        "attn.qkv.bias": _w(rng, 3 * d, scale=0.1),
        "attn.proj.weight": _w(rng, d, d),
        "attn.proj.bias": _w(rng, d, scale=0.1),
        "ln2.weight": 1 + _w(rng, d, scale=0.1),
        "ln2.bias": _w(rng, d, scale=0.1),
        "mlp.fc1.weight": _w(rng, d, 4 * d),
        "mlp.fc1.bias": _w(rng, 4 * d, scale=0.1),
        "mlp.fc2.weight": _w(rng, 4 * d, d),
        "mlp.fc2.bias": _w(rng, d, scale=0.1),
    }

    def attention(spec: ModelSpec, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        batch, seq, _ = x.shape
        qkv = _linear(x, spec.linear("attn.qkv"))
        q, k, v = (a.reshape(batch, seq, 2, 4).transpose(0, 2, 1, 3).astype(np.float64) for a in np.split(qkv, 3, axis=-1))
        mask = np.triu(np.full((seq, seq), -1e9), k=1)
        scores = q @ k.transpose(0, 1, 3, 2) / 2.0 + mask
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        context = (probs @ v).transpose(0, 2, 1, 3).reshape(batch, seq, d).astype(np.float32)
        proj = _linear(context, spec.linear("attn.proj"))
        return qkv, proj, proj

    def reference(spec: ModelSpec, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, list[Any]]:
        x = args[0]
        ln1 = _layer_norm(x, *spec.linear("ln1"))
        qkv, proj, attn = attention(spec, ln1)
        h = x + attn
        ln2 = _layer_norm(h, *spec.linear("ln2"))
        fc1 = _linear(ln2, spec.linear("mlp.fc1"))
        act = _gelu_tanh(fc1)
        fc2 = _linear(act, spec.linear("mlp.fc2"))
        out = h + fc2
        return {
            "": [out],
            "ln1": [ln1],
            "attn": [attn],
            "attn.qkv": [qkv],
            "attn.proj": [proj],
            "attn.drop": [proj],
            "ln2": [ln2],
            "mlp": [fc2],
            "mlp.fc1": [fc1],
            "mlp.act": [act],
            "mlp.fc2": [fc2],
            "mlp.drop": [fc2],
        }

    tree = (
        ("", "Block", None),
        ("ln1", "LayerNorm", ""),
        ("attn", "SelfAttention", ""),
        ("attn.qkv", "Linear", "attn"),
        ("attn.proj", "Linear", "attn"),
        ("attn.drop", "Dropout", "attn"),
        ("ln2", "LayerNorm", ""),
        ("mlp", "FeedForward", ""),
        ("mlp.fc1", "Linear", "mlp"),
        ("mlp.act", "GELU", "mlp"),
        ("mlp.fc2", "Linear", "mlp"),
        ("mlp.drop", "Dropout", "mlp"),
    )
    return ModelSpec(
        "block",
        weights,
        tree,
        lambda rng: ((rng.standard_normal((2, 5, d)).astype(np.float32),), {}),
        ("0",),
        reference,
        "pre-norm transformer block, causal attention, dropout 0.1",
    )


def _tricky_spec() -> ModelSpec:
    rng = np.random.default_rng(3)
    weights = {
        "proj.weight": _w(rng, 4, 4),
        "proj.bias": _w(rng, 4),
        "head.gate.weight": _w(rng, 4, 4),
        "head.gate.bias": _w(rng, 4),
    }

    def make_inputs(rng: np.random.Generator) -> tuple[tuple[Any, ...], dict[str, Any]]:
        x = rng.standard_normal((3, 4)).astype(np.float32)
        mask = (rng.random((3, 4)) > 0.3).astype(np.float32)
        offset = rng.standard_normal(4).astype(np.float32)
        return ((x, {"m": mask}), 0.5), {"offset": offset}

    def reference(spec: ModelSpec, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, list[Any]]:
        (x, aux), scale = args
        h1 = _linear(x, spec.linear("proj"))
        h2 = _linear((h1 * np.float32(scale)).astype(np.float32), spec.linear("proj"))
        g = _linear(h2, spec.linear("head.gate"))
        out = {"y": (g * aux["m"] + kwargs["offset"]).astype(np.float32), "parts": (g, h2), "count": 2}
        return {"": [out], "proj": [h1, h2], "head": [out], "head.gate": [g]}

    tree = (("", "Tricky", None), ("proj", "Linear", ""), ("head", "Head", ""), ("head.gate", "Linear", "head"))
    return ModelSpec(
        "tricky",
        weights,
        tree,
        make_inputs,
        ("0.0", "offset"),
        reference,
        "shared module called twice, nested and keyword inputs, dict/tuple/int outputs",
    )


SPECS: dict[str, ModelSpec] = {spec.name: spec for spec in (_mlp_spec(), _block_spec(), _tricky_spec())}


# ---------------------------------------------------------------------------------- trace view
class TraceView:
    """A recorded trace as plain rows, with lookups by route (helpers for the checks)."""

    def __init__(self, path: Path) -> None:
        self.trace = tracespec.load_trace(path)
        self.nodes = self.trace.nodes().to_pylist()
        self.calls = self.trace.calls().to_pylist()
        self.tensors = self.trace.tensors().to_pylist()
        self.route_of = {n["node"]: n["route"] for n in self.nodes}
        self.node_of = {n["route"]: n["node"] for n in self.nodes}

    def records(self, route: str | None = None, **where: Any) -> list[dict[str, Any]]:
        """Tensor records, filtered by route and by any column (``role=``, ``step=``...)."""
        return [
            r
            for r in self.tensors
            if (route is None or self.route_of[r["node"]] == route) and all(r[k] == v for k, v in where.items())
        ]

    def one(self, route: str, **where: Any) -> dict[str, Any]:
        found = self.records(route, **where)
        assert len(found) == 1, f"expected one record at {route!r} {where}, found {len(found)}"
        return found[0]

    def array(self, record: dict[str, Any]) -> np.ndarray:
        assert record["array"] is not None, f"record {record['id']} kept no data (level {record['level']})"
        return self.trace.read(record.get("rank", 0), record["array"])

    def calls_of(self, route: str, stage: str, step: int = 0) -> list[dict[str, Any]]:
        node = self.node_of[route]
        return sorted(
            (c for c in self.calls if c["node"] == node and c["stage"] == stage and c["step"] == step), key=lambda c: c["call"]
        )


def tree_shape(trace_path: Path) -> list[tuple[str, str, str | None, int]]:
    """``(route, class_name, parent route, position)`` of every node: what two frameworks'
    traces of the same model must agree on."""
    view = TraceView(trace_path)
    return [
        (n["route"], n["class_name"], None if n["parent"] is None else view.route_of[n["parent"]], n["position"])
        for n in view.nodes
    ]


@dataclass
class RunResult:
    """What a plain (or recorded) run computed, as numpy, for comparison with a trace."""

    outputs: list[Any] = field(default_factory=list)  # per step, the flattened root output
    losses: list[np.ndarray] = field(default_factory=list)
    parameter_grads: list[dict[str, np.ndarray]] = field(default_factory=list)
    input_grads: list[dict[str, np.ndarray]] = field(default_factory=list)
    parameters_after: list[dict[str, np.ndarray]] = field(default_factory=list)


# ---------------------------------------------------------------------------------- the suite
class AdapterTests(ABC):
    """The shared adapter suite. Subclass it in a test module and implement the hooks below."""

    framework: ClassVar[str]
    """The adapter's name, as written in the manifest (``"torch"``, ``"paddle"``)."""
    linear_weight_layout: ClassVar[str]
    """``"out_in"`` (PyTorch) or ``"in_out"`` (Paddle): how ``Linear.weight`` is stored."""
    atol: ClassVar[float] = 1e-5
    """Tolerance of recorded values against the float64 numpy reference."""
    momentum_slot: ClassVar[str]
    """The state :meth:`make_optimizer`'s optimizer keeps per parameter (``momentum_buffer``)."""
    adam_slots: ClassVar[frozenset[str]]
    """The state :meth:`make_adam`'s optimizer keeps per parameter."""

    # ------------------------------------------------------------ per-framework hooks
    @abstractmethod
    def build(self, spec: ModelSpec) -> Any:
        """The model ``spec.name`` (see the module docstring), weights from ``spec.weights``."""

    @abstractmethod
    def seed(self, seed: int) -> None:
        """Seed the framework's global RNG (dropout draws from it)."""

    @abstractmethod
    def to_tensor(self, array: np.ndarray, requires_grad: bool = False) -> Any:
        """A CPU tensor with the array's values and dtype (a leaf if ``requires_grad``)."""

    @abstractmethod
    def to_numpy(self, tensor: Any) -> np.ndarray:
        """The tensor's values (detached) as a numpy array."""

    @abstractmethod
    def is_tensor(self, value: Any) -> bool:
        """Whether ``value`` is a framework tensor."""

    @abstractmethod
    def set_training(self, model: Any, training: bool) -> None:
        """Switch train/eval mode."""

    @abstractmethod
    def backward(self, loss: Any) -> None:
        """Run backward from a scalar loss."""

    @abstractmethod
    def input_grad(self, tensor: Any) -> np.ndarray | None:
        """The gradient accumulated on a leaf input tensor, or None."""

    @abstractmethod
    def parameters(self, model: Any) -> dict[str, Any]:
        """``"route.name"`` -> parameter tensor, for every parameter (no duplicates)."""

    @abstractmethod
    def make_optimizer(self, model: Any) -> Any:
        """SGD, lr 0.1, momentum 0.9 (it keeps a momentum buffer per parameter)."""

    @abstractmethod
    def optimizer_step(self, optimizer: Any) -> None:
        """Apply the optimizer step (gradients stay)."""

    @abstractmethod
    def clear_grads(self, optimizer: Any) -> None:
        """Clear the gradients of the optimizer's parameters."""

    @abstractmethod
    def sequential(self, *layers: Any) -> Any:
        """The framework's sequential container of ``layers`` (routes ``"0"``, ``"1"``...)."""

    @abstractmethod
    def linear(self, n_in: int, n_out: int) -> Any:
        """A Linear layer with the framework's own initialisation."""

    @abstractmethod
    def dropout(self, p: float) -> Any:
        """A Dropout layer."""

    @abstractmethod
    def relu_in_place(self) -> Any:
        """A layer applying ReLU in place: it overwrites its input."""

    @abstractmethod
    def square(self) -> Any:
        """A layer computing ``x * x`` through a custom autograd function (its own backward)."""

    @abstractmethod
    def no_grad(self) -> AbstractContextManager[Any]:
        """The framework's context without autograd."""

    @abstractmethod
    def framework_version(self) -> str:
        """The framework's version, as the manifest records it."""

    @abstractmethod
    def cast(self, dtype: str) -> Any:
        """A layer that returns its input cast to ``dtype`` (a spec dtype name)."""

    @abstractmethod
    def bits_of(self, tensor: Any) -> bytes:
        """The raw bytes of a tensor, taken by the framework itself."""

    @abstractmethod
    def layer_norm(self, n: int) -> Any:
        """A LayerNorm over the last axis, of size ``n``."""

    @abstractmethod
    def fan_out(self) -> Any:
        """A layer feeding its input ``h`` to three sublayers ``q``, ``k``, ``v`` (Linear(4, 4)):
        ``softmax(q(h) @ k(h)^T, last axis) @ v(h)``."""

    @abstractmethod
    def make_adam(self, model: Any) -> Any:
        """Adam, lr 0.01."""

    @abstractmethod
    def adam_state(self, optimizer: Any, parameter: Any) -> dict[str, np.ndarray]:
        """The state :meth:`make_adam`'s optimizer keeps for ``parameter``, read from the optimizer."""

    @abstractmethod
    def distributed_script(self, store: Path) -> str:
        """Python code run as each rank of a two-process job (``store``: a file the job may meet
        at): it records a ``Linear(3, 2)`` for one step into the path ``sys.argv[1]``."""

    @abstractmethod
    def distributed_env(self, rank: int) -> dict[str, str]:
        """The environment the framework's launcher gives rank ``rank`` of two."""

    # ------------------------------------------------------------ running
    def inputs(self, spec: ModelSpec) -> tuple[tuple[Any, ...], dict[str, Any], tuple[tuple[Any, ...], dict[str, Any]]]:
        """The spec's inputs as framework tensors (and the numpy originals)."""
        args_np, kwargs_np = spec.make_inputs(np.random.default_rng(0))
        leaves: dict[str, Any] = {}

        def convert(value: Any, slot: str) -> Any:
            if isinstance(value, np.ndarray):
                tensor = self.to_tensor(value, requires_grad=slot in spec.grad_inputs)
                leaves[slot] = tensor
                return tensor
            if isinstance(value, tuple):
                return tuple(convert(v, f"{slot}.{i}") for i, v in enumerate(value))
            if isinstance(value, dict):
                return {k: convert(v, f"{slot}.{k}") for k, v in value.items()}
            return value

        args = tuple(convert(a, str(i)) for i, a in enumerate(args_np))
        kwargs = {k: convert(v, k) for k, v in kwargs_np.items()}
        self._leaves = leaves
        return args, kwargs, (args_np, kwargs_np)

    def loss_of(self, output: Any) -> Any:
        """``sum(leaf * probe)`` over the output's tensor leaves, ``probe`` fixed per shape."""
        loss = None
        for _, leaf in flatten(output, "", self.is_tensor):
            if self.is_tensor(leaf):
                term = (leaf * self.to_tensor(self.probe(tuple(leaf.shape)))).sum()
                loss = term if loss is None else loss + term
        return loss

    @staticmethod
    def probe(shape: tuple[int, ...]) -> np.ndarray:
        size = math.prod(shape)
        return np.linspace(-1.0, 1.0, size, dtype=np.float32).reshape(shape)

    def run(
        self,
        spec: ModelSpec,
        path: Path | None = None,
        *,
        train: bool = False,
        steps: int = 1,
        optimizer: bool = False,
        **options: Any,
    ) -> RunResult:
        """Build the model, run ``steps`` forward/backward steps (recorded into ``path`` if given)."""
        self.seed(1234)
        model = self.build(spec)
        self.set_training(model, train)
        opt = self.make_optimizer(model) if optimizer else None
        result = RunResult()
        recorder = tracespec.record(model, path, optimizer=opt, **options) if path is not None else None
        assert recorder is None or isinstance(recorder, Recorder)  # torch and Paddle record with step()
        if recorder is not None:
            recorder.__enter__()
        try:
            for _ in range(steps):
                args, kwargs, _ = self.inputs(spec)
                output = model(*args, **kwargs)
                loss = self.loss_of(output)
                self.backward(loss)
                result.outputs.append(
                    [(s, self.to_numpy(v) if self.is_tensor(v) else v) for s, v in flatten(output, "", self.is_tensor)]
                )
                result.losses.append(self.to_numpy(loss))
                result.input_grads.append({s: g for s, t in self._leaves.items() if (g := self.input_grad(t)) is not None})
                params = self.parameters(model)
                result.parameter_grads.append({})
                for name, p in params.items():
                    grad = getattr(p, "grad", None)
                    if grad is not None:
                        result.parameter_grads[-1][name] = self.to_numpy(grad)
                if opt is not None:
                    self.optimizer_step(opt)
                    result.parameters_after.append({n: self.to_numpy(p) for n, p in self.parameters(model).items()})
                if recorder is not None:
                    recorder.step()
                if opt is not None:
                    self.clear_grads(opt)
        except BaseException:
            if recorder is not None:
                recorder.__exit__(Exception, Exception(), None)
            raise
        if recorder is not None:
            recorder.__exit__(None, None, None)
        return result

    def record(self, spec: ModelSpec, tmp_path: Path, name: str = "trace", **kwargs: Any) -> tuple[TraceView, RunResult]:
        kwargs.setdefault("capture", "full")
        result = self.run(spec, tmp_path / name, **kwargs)
        return TraceView(tmp_path / name), result

    def stored_weight(self, spec: ModelSpec, key: str, class_name: str) -> np.ndarray:
        """The spec weight ``key`` in the framework's native layout."""
        weight = spec.weights[key]
        if class_name == "Linear" and key.endswith(".weight") and self.linear_weight_layout == "out_in":
            return weight.T
        return weight

    # ------------------------------------------------------------ tree and calls
    @pytest.mark.parametrize("name", sorted(SPECS))
    def test_tree_matches_the_spec(self, name: str, tmp_path: Path) -> None:
        spec = SPECS[name]
        view, _ = self.record(spec, tmp_path, capture="hash")
        assert [(route, cls, parent) for route, cls, parent, _ in tree_shape(tmp_path / "trace")] == list(spec.tree)
        assert view.trace.manifest.framework == self.framework
        positions: dict[str | None, list[int]] = {}
        for _route, _, parent, position in tree_shape(tmp_path / "trace"):
            positions.setdefault(parent, []).append(position)
        assert all(p == list(range(len(p))) for p in positions.values())

    def test_module_called_twice_is_two_calls_of_one_node(self, tmp_path: Path) -> None:
        view, _ = self.record(SPECS["tricky"], tmp_path)
        assert "alias" not in view.node_of
        forward = view.calls_of("proj", "forward")
        assert [c["call"] for c in forward] == [0, 1]
        assert forward[0]["end"] < forward[1]["begin"]
        outputs = view.records("proj", role="output", stage="forward")
        assert sorted(r["call"] for r in outputs) == [0, 1]
        backward = view.calls_of("proj", "backward")
        assert [c["call"] for c in backward] == [0, 1]
        assert backward[1]["end"] < backward[0]["end"], "the second call's backward completes first"

    @pytest.mark.parametrize("name", sorted(SPECS))
    def test_calls_nest_inside_their_parent(self, name: str, tmp_path: Path) -> None:
        view, _ = self.record(SPECS[name], tmp_path, capture="hash")
        parent_of = {n["node"]: n["parent"] for n in view.nodes}
        forward = [c for c in view.calls if c["stage"] == "forward"]
        for c in forward:
            assert c["begin"] < c["end"]
            parent = parent_of[c["node"]]
            if parent is not None:
                assert any(p["begin"] < c["begin"] and c["end"] < p["end"] for p in forward if p["node"] == parent)
        events = [e for c in forward for e in (c["begin"], c["end"])]
        assert sorted(events) == list(range(len(events))), "one event counter, no gaps, no repeats"

    def test_backward_order_is_reverse_of_forward(self, tmp_path: Path) -> None:
        view, _ = self.record(SPECS["mlp"], tmp_path, capture="hash")
        ends = {r: view.calls_of(r, "backward")[0]["end"] for r in ("fc1", "act", "fc2")}
        begins = {r: view.calls_of(r, "backward")[0]["begin"] for r in ("fc1", "act", "fc2")}
        assert ends["fc2"] < ends["act"] < ends["fc1"]
        assert begins["fc2"] < begins["act"] < begins["fc1"]
        for r in ("fc1", "act", "fc2"):
            assert begins[r] < ends[r]

    # ------------------------------------------------------------ values
    @pytest.mark.parametrize("name", sorted(SPECS))
    def test_forward_values_match_numpy(self, name: str, tmp_path: Path) -> None:
        spec = SPECS[name]
        view, _ = self.record(spec, tmp_path)
        args_np, kwargs_np = spec.make_inputs(np.random.default_rng(0))
        expected = spec.reference(spec, args_np, kwargs_np)
        for route, per_call in expected.items():
            for call, value in enumerate(per_call):
                for slot, leaf in flatten(value, "", lambda v: isinstance(v, np.ndarray)):
                    record = view.one(route, role="output", stage="forward", call=call, slot=slot)
                    if isinstance(leaf, np.ndarray):
                        np.testing.assert_allclose(
                            view.array(record), leaf, atol=self.atol, rtol=1e-5, err_msg=f"{route}[{call}] {slot}"
                        )
                        assert record["dtype"] == "float32"
                    else:
                        assert record["dtype"] is None and record["value"] == repr(leaf)

    def test_inputs_have_positional_keyword_and_nested_slots(self, tmp_path: Path) -> None:
        spec = SPECS["tricky"]
        view, _ = self.record(spec, tmp_path)
        (x, aux), scale = spec.make_inputs(np.random.default_rng(0))[0]
        offset = spec.make_inputs(np.random.default_rng(0))[1]["offset"]
        root = {r["slot"]: r for r in view.records("", role="input", stage="forward")}
        assert set(root) == {"0.0", "0.1.m", "1", "offset"}
        np.testing.assert_array_equal(view.array(root["0.0"]), x)
        np.testing.assert_array_equal(view.array(root["0.1.m"]), aux["m"])
        np.testing.assert_array_equal(view.array(root["offset"]), offset)
        assert root["1"]["value_type"] == "float" and root["1"]["value"] == repr(scale)
        head = {r["slot"] for r in view.records("head", role="input", stage="forward")}
        assert head == {"0", "mask", "bias"}
        outputs = {r["slot"]: r for r in view.records("", role="output", stage="forward")}
        assert set(outputs) == {"y", "parts.0", "parts.1", "count"}
        assert outputs["count"]["value_type"] == "int" and outputs["count"]["value"] == "2"

    @pytest.mark.parametrize("name", sorted(SPECS))
    def test_gradients_match_a_plain_backward(self, name: str, tmp_path: Path) -> None:
        spec = SPECS[name]
        view, _ = self.record(spec, tmp_path)
        bare = self.run(spec)
        recorded = {
            f"{view.route_of[r['node']]}.{r['slot']}".lstrip("."): view.array(r)
            for r in view.records(role="parameter_grad", stage="backward")
        }
        assert recorded.keys() == bare.parameter_grads[0].keys()
        for key, grad in bare.parameter_grads[0].items():
            np.testing.assert_array_equal(recorded[key], grad, err_msg=key)
        for slot, grad in bare.input_grads[0].items():
            np.testing.assert_array_equal(view.array(view.one("", role="grad_input", slot=slot)), grad, err_msg=slot)
        for slot, value in bare.outputs[0]:
            # ("parts.0" is also used to compute "y": its gradient is the sum of both uses)
            if isinstance(value, np.ndarray) and slot in ("0", "y"):
                got = view.array(view.one("", role="grad_output", slot=slot))
                np.testing.assert_array_equal(got, self.probe(value.shape), err_msg=slot)

    def test_module_gradients_match_numpy(self, tmp_path: Path) -> None:
        spec = SPECS["mlp"]
        view, _ = self.record(spec, tmp_path)
        x = spec.make_inputs(np.random.default_rng(0))[0][0]
        w1, b1 = spec.linear("fc1")
        w2, _ = spec.linear("fc2")
        h1 = x.astype(np.float64) @ w1 + b1
        g_out = self.probe((3, 4)).astype(np.float64)
        g_act_out = g_out @ w2.T
        g_fc1_out = g_act_out * (h1 > 0)
        checks = {
            ("fc2", "grad_output"): g_out,
            ("fc2", "grad_input"): g_act_out,
            ("act", "grad_output"): g_act_out,
            ("act", "grad_input"): g_fc1_out,
            ("fc1", "grad_output"): g_fc1_out,
            ("fc1", "grad_input"): g_fc1_out @ w1.T,
        }
        for (route, role), expected in checks.items():
            got = view.array(view.one(route, role=role, stage="backward", slot="0"))
            np.testing.assert_allclose(got, expected, atol=self.atol, rtol=1e-5, err_msg=f"{route} {role}")
            assert view.one(route, role=role, slot="0")["call"] == 0

    def test_parameters_recorded_once_per_step_in_native_layout(self, tmp_path: Path) -> None:
        spec = SPECS["tricky"]
        view, _ = self.record(spec, tmp_path, steps=2)
        for step in (0, 1):
            params = view.records(role="parameter", stage="forward", step=step)
            keys = sorted(f"{view.route_of[r['node']]}.{r['slot']}" for r in params)
            assert keys == sorted(spec.weights)
            assert all(r["call"] is None for r in params)
        for r in view.records(role="parameter", stage="forward", step=0):
            route = view.route_of[r["node"]]
            key = f"{route}.{r['slot']}"
            cls = next(c for rt, c, _ in spec.tree if rt == route)
            np.testing.assert_array_equal(view.array(r), self.stored_weight(spec, key, cls))

    def test_two_steps_with_an_optimizer(self, tmp_path: Path) -> None:
        spec = SPECS["mlp"]
        view, result = self.record(spec, tmp_path, steps=2, optimizer=True)
        assert view.trace.steps == [0, 1]
        for step in (0, 1):
            after = {
                f"{view.route_of[r['node']]}.{r['slot']}": view.array(r)
                for r in view.records(role="parameter", stage="update", step=step)
            }
            assert after.keys() == result.parameters_after[step].keys()
            for key, value in result.parameters_after[step].items():
                np.testing.assert_array_equal(after[key], value, err_msg=key)
            state = view.records(role="optimizer_state", stage="update", step=step)
            assert {f"{view.route_of[r['node']]}.{r['slot'].rpartition('.')[0]}" for r in state} == set(spec.weights)
        before_1 = {
            f"{view.route_of[r['node']]}.{r['slot']}": view.array(r)
            for r in view.records(role="parameter", stage="forward", step=1)
        }
        for key, value in result.parameters_after[0].items():
            np.testing.assert_array_equal(before_1[key], value, err_msg=f"step 1 forward uses the updated {key}")
        grads_1 = {f"{view.route_of[r['node']]}.{r['slot']}": view.array(r) for r in view.records(role="parameter_grad", step=1)}
        for key, grad in result.parameter_grads[1].items():
            np.testing.assert_array_equal(grads_1[key], grad, err_msg=key)

    # ------------------------------------------------------------ no observer effect
    @pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
    @pytest.mark.parametrize("capture", ["full", "stats", "hash"])
    def test_no_observer_effect(self, train: bool, capture: str, tmp_path: Path) -> None:
        spec = SPECS["block"]
        bare = self.run(spec, train=train, steps=2, optimizer=True)
        recorded = self.run(spec, tmp_path / "t", train=train, steps=2, optimizer=True, capture=capture)
        for step in range(2):
            assert bare.losses[step].tobytes() == recorded.losses[step].tobytes()
            for (slot, a), (_, b) in zip(bare.outputs[step], recorded.outputs[step], strict=True):
                assert np.asarray(a).tobytes() == np.asarray(b).tobytes(), slot
            for kind in ("parameter_grads", "input_grads", "parameters_after"):
                a_map, b_map = getattr(bare, kind)[step], getattr(recorded, kind)[step]
                assert a_map.keys() == b_map.keys()
                for key in a_map:
                    assert a_map[key].tobytes() == b_map[key].tobytes(), f"{kind} {key} step {step}"

    # ------------------------------------------------------------ capture levels and selection
    def test_stats_and_hash_levels_describe_the_same_values(self, tmp_path: Path) -> None:
        spec = SPECS["block"]
        full, _ = self.record(spec, tmp_path, name="full", capture="full")
        stats, _ = self.record(spec, tmp_path, name="stats", capture="stats")
        hashed, _ = self.record(spec, tmp_path, name="hash", capture="hash")

        def key(r: dict[str, Any]) -> tuple[Any, ...]:
            return (r["step"], r["stage"], r["node"], r["call"], r["role"], r["slot"])

        by_key = {key(r): r for r in full.tensors if r["dtype"] is not None}
        assert {key(r) for r in stats.tensors if r["dtype"]} == by_key.keys() == {key(r) for r in hashed.tensors if r["dtype"]}
        for r in stats.tensors:
            if r["dtype"] is None:
                continue
            assert r["level"] == "stats" and r["array"] is None
            reference = compute_stats(full.array(by_key[key(r)]))
            for name in ("min", "max", "mean", "std", "l2"):
                assert r[name] == pytest.approx(getattr(reference, name), rel=1e-9, abs=1e-12), name
            assert (r["nan_count"], r["inf_count"]) == (reference.nan_count, reference.inf_count)
        for r in hashed.tensors:
            if r["dtype"] is not None:
                assert r["level"] == "hash" and r["array"] is None and r["mean"] is None
                assert r["hash"] == content_hash(full.array(by_key[key(r)]))
        assert stats.trace.parts[0].manifest.store_arrays == 0

    def test_inputs_that_are_earlier_outputs_are_stored_once(self, tmp_path: Path) -> None:
        view, _ = self.record(SPECS["mlp"], tmp_path)
        act_in = view.one("act", role="input", slot="0")
        fc1_out = view.one("fc1", role="output", slot="0")
        assert act_in["array"] == fc1_out["array"] and act_in["id"] > fc1_out["id"]
        arrays = {r["array"] for r in view.tensors if r["array"]}
        assert view.trace.parts[0].manifest.store_arrays == len(arrays) < len([r for r in view.tensors if r["array"]])

    def test_include_exclude_by_route_and_class(self, tmp_path: Path) -> None:
        spec = SPECS["block"]
        view, _ = self.record(spec, tmp_path, name="a", capture="hash", include=["mlp"], exclude=["Dropout"])
        routes = {view.route_of[r["node"]] for r in view.tensors}
        assert routes == {"mlp", "mlp.fc1", "mlp.act", "mlp.fc2"}
        assert len(view.nodes) == len(spec.tree), "the whole tree is recorded, whatever the selection"
        view, _ = self.record(spec, tmp_path, name="b", capture="hash", exclude=["attn.*", "LayerNorm"])
        routes = {view.route_of[r["node"]] for r in view.tensors}
        assert routes == {"", "attn", "mlp", "mlp.fc1", "mlp.act", "mlp.fc2", "mlp.drop"}

    def test_roles_and_levels_per_selection(self, tmp_path: Path) -> None:
        spec = SPECS["mlp"]
        view, _ = self.record(
            spec, tmp_path, capture="hash", roles=["outputs", "grads"], levels={"grad_input": "stats", "fc2": "full"}
        )
        assert {r["role"] for r in view.tensors} == {"output", "grad_output", "grad_input", "parameter_grad"}
        for r in view.tensors:
            route = view.route_of[r["node"]]
            expected = "stats" if r["role"] == "grad_input" else "full" if route == "fc2" else "hash"
            assert r["level"] == expected, (route, r["role"])

    def test_every_nth_step(self, tmp_path: Path) -> None:
        view, _ = self.record(SPECS["mlp"], tmp_path, capture="stats", steps=5, every=2)
        assert sorted({r["step"] for r in view.tensors}) == [0, 2, 4]
        assert sorted({c["step"] for c in view.calls}) == [0, 2, 4]

    def test_byte_budget_stops_data_not_the_run(self, tmp_path: Path) -> None:
        spec = SPECS["block"]
        bare = self.run(spec)
        with pytest.warns(CaptureBudgetWarning, match="max_bytes"):
            view, result = self.record(spec, tmp_path, max_bytes=4096)
        assert result.losses[0].tobytes() == bare.losses[0].tobytes()
        arrays = {r["array"]: math.prod(r["shape"]) * 4 for r in view.tensors if r["array"] is not None}
        assert 0 < sum(arrays.values()) <= 4096
        assert any(r["level"] == "stats" for r in view.tensors), "past the budget, records keep statistics"
        assert view.trace.complete

    # ------------------------------------------------------------ lifecycle and options
    def test_an_exception_leaves_an_incomplete_readable_trace(self, tmp_path: Path) -> None:
        spec = SPECS["mlp"]
        model = self.build(spec)
        args, kwargs, _ = self.inputs(spec)
        with pytest.raises(RuntimeError, match="boom"), tracespec.record(model, tmp_path / "t", capture="full"):
            model(*args, **kwargs)
            raise RuntimeError("boom")
        view = TraceView(tmp_path / "t")
        assert not view.trace.complete
        assert view.records("fc1", role="output")

    def test_hooks_are_removed_after_recording(self, tmp_path: Path) -> None:
        spec = SPECS["mlp"]
        model = self.build(spec)
        args, kwargs, _ = self.inputs(spec)
        with tracespec.record(model, tmp_path / "t") as rec:
            model(*args, **kwargs)
            rec.step()
        model(*args, **kwargs)  # not recorded
        view = TraceView(tmp_path / "t")
        assert view.trace.steps == [0] and view.trace.complete

    def test_bad_options_are_usage_errors(self, tmp_path: Path) -> None:
        model = self.build(SPECS["mlp"])
        cases: list[tuple[dict[str, Any], str]] = [
            ({"capture": "everything"}, "capture"),
            ({"every": 0}, "every"),
            ({"roles": ["weights"]}, "roles"),
            ({"include": [3]}, "include"),
            ({"levels": {"fc1": "most"}}, "levels"),
            ({"max_byte": 10}, "max_bytes"),
        ]
        for options, message in cases:
            with pytest.raises(UsageError, match=message):
                tracespec.record(model, tmp_path / "t", **options)
        with tracespec.record(model, tmp_path / "t"):
            pass
        with pytest.raises(UsageError, match="overwrite"), tracespec.record(model, tmp_path / "t"):
            pass
        with tracespec.record(model, tmp_path / "t", overwrite=True, metadata={"commit": "abc"}):
            pass
        assert tracespec.load_trace(tmp_path / "t").manifest.metadata == {"commit": "abc"}

    def test_show_prints_the_tree(self, tmp_path: Path) -> None:
        spec = SPECS["tricky"]
        self.record(spec, tmp_path, capture="stats")
        # the command as a user runs it (a library of tests does not import the command line)
        got = subprocess.run(
            [sys.executable, "-m", "tracespec.cli", "show", str(tmp_path / "trace")], capture_output=True, text=True
        )
        assert got.returncode == 0, got.stderr
        lines = got.stdout.splitlines()
        for route, cls, _ in spec.tree[1:]:
            assert any(route in line and cls in line for line in lines), route
        assert any("proj" in line and "×2" in line for line in lines), "a module called twice shows ×2"
        assert any("out[0]#1" in line for line in lines), "the second call's output is marked"

    def test_warnings_are_not_raised_on_a_plain_recording(self, tmp_path: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            self.record(SPECS["block"], tmp_path, train=True)

    # ------------------------------------------------------------ framework behaviour
    def _weight_in_out(self, layer: Any) -> np.ndarray:
        weight = self.to_numpy(layer.weight)
        return weight.T if self.linear_weight_layout == "out_in" else weight

    def test_dropout_in_train_mode_is_bit_identical_without_reseeding(self, tmp_path: Path) -> None:
        x_values = np.random.default_rng(5).standard_normal((8, 16)).astype(np.float32)

        def run(path: Path | None) -> tuple[bytes, bytes]:
            self.seed(7)
            model = self.sequential(self.linear(16, 16), self.dropout(0.5), self.linear(16, 4))
            self.set_training(model, True)
            x = self.to_tensor(x_values, requires_grad=True)
            if path is None:
                out = model(x)
                self.backward(out.sum())
                again = model(x)  # a second draw from the same RNG stream
            else:
                with tracespec.record(model, path, capture="full") as rec:
                    out = model(x)
                    self.backward(out.sum())
                    rec.step()
                    again = model(x)
            grad = self.input_grad(x)
            assert grad is not None
            return np.concatenate([self.to_numpy(out), self.to_numpy(again)]).tobytes(), grad.tobytes()

        assert run(None) == run(tmp_path / "t")
        view = TraceView(tmp_path / "t")
        dropped = view.array(view.one("1", role="output", step=0))
        assert (dropped == 0).any() and (dropped != 0).any()

    def test_a_layer_that_overwrites_its_input_keeps_gradients(self, tmp_path: Path) -> None:
        self.seed(0)
        model = self.sequential(self.linear(4, 8), self.relu_in_place(), self.linear(8, 2))
        x = self.to_tensor(np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32), requires_grad=True)
        with tracespec.record(model, tmp_path / "t", capture="full") as rec:
            self.backward(model(x).sum())
            rec.step()
        view = TraceView(tmp_path / "t")
        pre = self.to_numpy(model[0](x))
        np.testing.assert_allclose(view.array(view.one("0", role="output")), pre, rtol=1e-6)
        np.testing.assert_allclose(view.array(view.one("1", role="output")), np.maximum(pre, 0), rtol=1e-6)
        g = view.array(view.one("1", role="grad_output"))
        np.testing.assert_allclose(view.array(view.one("1", role="grad_input")), g * (pre > 0), rtol=1e-6)
        assert len(view.calls_of("1", "backward")) == 1

    def test_custom_autograd_function(self, tmp_path: Path) -> None:
        self.seed(0)
        model = self.sequential(self.linear(3, 3), self.square(), self.linear(3, 1))
        x = self.to_tensor(np.random.default_rng(1).standard_normal((4, 3)).astype(np.float32), requires_grad=True)
        with tracespec.record(model, tmp_path / "t", capture="full") as rec:
            self.backward(model(x).sum())
            rec.step()
        view = TraceView(tmp_path / "t")
        h = self.to_numpy(model[0](x))
        np.testing.assert_allclose(view.array(view.one("1", role="output")), h * h, rtol=1e-6)
        g_out = view.array(view.one("1", role="grad_output"))
        np.testing.assert_allclose(g_out, np.broadcast_to(self._weight_in_out(model[2]).T, (4, 3)), rtol=1e-6)
        np.testing.assert_allclose(view.array(view.one("1", role="grad_input")), 2 * h * g_out, rtol=1e-6)

    def test_no_grad_inference_records_forward_only(self, tmp_path: Path) -> None:
        model = self.build(SPECS["mlp"])
        self.set_training(model, False)
        with tracespec.record(model, tmp_path / "t", capture="stats") as rec, self.no_grad():
            model(self.to_tensor(np.ones((2, 6), np.float32)))
            rec.step()
        view = TraceView(tmp_path / "t")
        assert {r["stage"] for r in view.tensors} == {"forward"}
        assert {c["stage"] for c in view.calls} == {"forward"}

    def test_rank_and_world_size_from_options(self, tmp_path: Path) -> None:
        model = self.build(SPECS["mlp"])
        for rank in (0, 1):
            with tracespec.record(model, tmp_path / "t", rank=rank, world_size=2) as rec:
                model(self.to_tensor(np.ones((2, 6), np.float32)))
                rec.step()
        trace = tracespec.load_trace(tmp_path / "t")
        assert trace.ranks == [0, 1] and trace.manifest.world_size == 2 and trace.complete

    def test_optimizer_step_records_gradients_before_they_are_cleared(self, tmp_path: Path) -> None:
        model = self.build(SPECS["mlp"])
        opt = self.make_optimizer(model)
        weight = self.parameters(model)["fc1.weight"]
        with tracespec.record(model, tmp_path / "t", capture="full", optimizer=opt) as rec:
            self.backward(model(self.to_tensor(np.ones((2, 6), np.float32))).sum())
            grad = self.input_grad(weight)
            self.optimizer_step(opt)
            self.clear_grads(opt)  # before rec.step(): the wrapped step already recorded the gradients
            rec.step()
        assert "step" not in vars(opt), "the optimizer is restored after recording"
        view = TraceView(tmp_path / "t")
        np.testing.assert_array_equal(view.array(view.one("fc1", role="parameter_grad", slot="weight")), grad)
        np.testing.assert_array_equal(
            view.array(view.one("fc1", role="parameter", stage="update", slot="weight")), self.to_numpy(weight)
        )
        momentum = view.one("fc1", role="optimizer_state", slot=f"weight.{self.momentum_slot}")
        np.testing.assert_array_equal(view.array(momentum), grad)  # the first step's momentum is the gradient

    def test_record_picks_this_adapter(self, tmp_path: Path) -> None:
        from tracespec.adapters import adapter_for

        model = self.linear(2, 2)
        assert self.framework == adapter_for(model).FRAMEWORK
        with tracespec.record(model, tmp_path / "t") as rec:
            rec.step()
        manifest = tracespec.load_trace(tmp_path / "t").manifest
        assert (manifest.framework, manifest.framework_version) == (self.framework, self.framework_version())

    def test_adam_state_and_update_are_recorded_even_when_grads_are_cleared_first(self, tmp_path: Path) -> None:
        self.seed(0)
        model = self.sequential(self.linear(3, 3), self.linear(3, 1))
        opt = self.make_adam(model)
        x = self.to_tensor(np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32))
        grads, weights = [], []
        with tracespec.record(model, tmp_path / "t", capture="full", optimizer=opt) as rec:
            for _ in range(2):
                self.backward(model(x).sum())
                grads.append({n: self.input_grad(p) for n, p in self.parameters(model).items()})
                self.optimizer_step(opt)
                weights.append({n: self.to_numpy(p) for n, p in self.parameters(model).items()})
                self.clear_grads(opt)  # before rec.step(): the optimizer hooks already recorded them
                rec.step()
        view = TraceView(tmp_path / "t")
        for step in (0, 1):
            for role, stage, expected in (("parameter_grad", "backward", grads), ("parameter", "update", weights)):
                got = {
                    f"{view.route_of[r['node']]}.{r['slot']}": view.array(r)
                    for r in view.records(role=role, stage=stage, step=step)
                }
                assert got.keys() == expected[step].keys()
                for key, value in expected[step].items():
                    np.testing.assert_array_equal(got[key], value, err_msg=f"{role} {key}")
        for key, param in self.parameters(model).items():
            route, _, name = key.rpartition(".")
            state = {r["slot"]: view.array(r) for r in view.records(route, role="optimizer_state", step=1)}
            kept = self.adam_state(opt, param)
            assert set(kept) == self.adam_slots
            for slot, value in kept.items():
                np.testing.assert_array_equal(state[f"{name}.{slot}"], value, err_msg=f"{key} {slot}")

    @pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float8_e4m3fn"])
    def test_low_precision_values_are_recorded_with_their_dtype_and_bits(self, dtype: str, tmp_path: Path) -> None:
        model = self.cast(dtype)
        x = np.random.default_rng(0).standard_normal((4, 5)).astype(np.float32) * 3
        with tracespec.record(model, tmp_path / "t", capture="full") as rec:
            out = model(self.to_tensor(x))
            rec.step()
        view = TraceView(tmp_path / "t")
        record = view.one("", role="output")
        assert record["dtype"] == dtype
        got = view.array(record)
        assert got.dtype == numpy_dtype(dtype), "never the integer bits, never upcast"
        assert got.tobytes() == self.bits_of(out)
        expected = x.astype(got.dtype)  # numpy's own rounding of the same float32 values
        assert got.tobytes() == expected.tobytes()
        assert record["hash"] == content_hash(got)
        assert record["mean"] == pytest.approx(float(expected.astype(np.float64).mean()), rel=1e-12)

    def test_grad_input_sums_every_use(self, tmp_path: Path) -> None:
        # A layer feeding its input to several sublayers: autograd engines may sum those
        # contributions into the buffer of the first, in place (Paddle does), so a gradient must
        # never be deduplicated against a partial one that lived at the same address.
        self.seed(0)
        model = self.sequential(self.layer_norm(4), self.fan_out())
        x = self.to_tensor(np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32))
        with tracespec.record(model, tmp_path / "t", capture="full") as rec:
            self.backward((model(x) ** 2).sum())
            rec.step()
        view = TraceView(tmp_path / "t")
        total = view.array(view.one("1", role="grad_input"))
        parts = [view.array(view.one(f"1.{name}", role="grad_input")) for name in ("q", "k", "v")]
        np.testing.assert_allclose(total, parts[0] + parts[1] + parts[2], rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(total, view.array(view.one("0", role="grad_output")))

    def test_recording_keeps_no_step_alive(self, tmp_path: Path) -> None:
        # A gradient hook that referenced the tensor it sits on made a cycle through autograd that
        # Python's collector cannot see: every step's module inputs, and the recorder, stayed alive.
        model = self.sequential(self.linear(8, 16), self.dropout(0.5), self.linear(16, 4))
        seen: list[weakref.ref[Any]] = []
        model[2].register_forward_pre_hook(lambda module, args: seen.append(weakref.ref(args[0])))
        rng = np.random.default_rng(0)
        with tracespec.record(model, tmp_path / "t", capture="full") as rec:
            for _ in range(3):
                self.backward(model(self.to_tensor(rng.standard_normal((5, 8)).astype(np.float32), requires_grad=True)).sum())
                rec.step()
        recorder = weakref.ref(rec)
        del rec
        gc.collect()
        assert len(seen) == 3
        assert recorder() is None
        assert [ref() for ref in seen] == [None, None, None]

    def test_the_distributed_rank_is_picked_up(self, tmp_path: Path) -> None:
        script = self.distributed_script(tmp_path / "store")
        procs = [
            subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "t")], env=self.distributed_env(rank))
            for rank in (0, 1)
        ]
        assert [p.wait(timeout=120) for p in procs] == [0, 0]
        trace = tracespec.load_trace(tmp_path / "t")
        assert trace.ranks == [0, 1] and trace.manifest.world_size == 2 and trace.complete
        assert trace.manifest.framework == self.framework
