"""Small numpy networks recorded with SyntheticRecorder, with knobs to inject porting bugs."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tracespec.testing.synthetic import SyntheticRecorder

WIDTH = 16
HIDDEN = 32


@dataclass(frozen=True)
class Knobs:
    """What differs between two runs of the tiny network."""

    ln_eps: float = 1e-5
    gelu: str = "erf"
    bug_block: int = 1  # which block the knobs below apply to
    bug_ln_eps: float | None = None
    bug_gelu: str | None = None
    einsum: bool = False
    weight_noise: float = 0.0
    input_noise: float = 0.0
    inside_parent_scale: float = 1.0  # a functional op inside the block, between its children
    framework: str = "numpy"
    names: tuple[str, str, str] = ("ln", "fc1", "fc2")
    wrap_fc1: bool = False
    blocks: int = 3
    transpose_linear: bool = False  # store Linear weights [in, out] (Paddle's layout)
    layout_note: object = None  # the Linear nodes' attrs.parameter_layout["weight"], if any


def _weights(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    w: dict[str, np.ndarray] = {
        "embed.weight": (rng.standard_normal((WIDTH, 8)) * 0.02).astype(np.float32),
        "head.weight": (rng.standard_normal((4, WIDTH)) * 0.2).astype(np.float32),
    }
    for i in range(6):
        w[f"{i}.ln.weight"] = (1 + 0.1 * rng.standard_normal(WIDTH)).astype(np.float32)
        w[f"{i}.ln.bias"] = (0.1 * rng.standard_normal(WIDTH)).astype(np.float32)
        w[f"{i}.fc1.weight"] = (rng.standard_normal((HIDDEN, WIDTH)) / math.sqrt(WIDTH)).astype(np.float32)
        w[f"{i}.fc2.weight"] = (rng.standard_normal((WIDTH, HIDDEN)) / math.sqrt(HIDDEN) * 0.1).astype(np.float32)
    return w


def _gelu(x: np.ndarray, kind: str) -> np.ndarray:
    x64 = x.astype(np.float64)
    if kind == "tanh":
        y = 0.5 * x64 * (1 + np.tanh(math.sqrt(2 / math.pi) * (x64 + 0.044715 * x64**3)))
    else:
        erf = np.vectorize(math.erf)
        y = 0.5 * x64 * (1 + erf(x64 / math.sqrt(2)))
    return y.astype(np.float32)


def _layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return ((x - mean) / np.sqrt(var + np.float32(eps)) * w + b).astype(np.float32)


def _linear(x: np.ndarray, w: np.ndarray, einsum: bool) -> np.ndarray:
    if einsum:
        return np.einsum("bi,oi->bo", x.astype(np.float64), w.astype(np.float64)).astype(np.float32)
    return (x @ w.T).astype(np.float32)


def record_tiny_net(path: Path, knobs: Knobs = Knobs(), seed: int = 0, steps: int = 1) -> Path:
    """A tiny residual MLP: embed -> blocks[i] (LayerNorm, Linear, GELU, Linear) -> head."""
    w = _weights(seed)
    if knobs.weight_noise:
        w["1.fc1.weight"] = w["1.fc1.weight"] + np.float32(knobs.weight_noise)
    rng = np.random.default_rng(100)
    x = rng.standard_normal((4, 8)).astype(np.float32)
    if knobs.input_noise:
        x = x + np.float32(knobs.input_noise)
    ln_name, fc1_name, fc2_name = knobs.names

    def stored(weight: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(weight.T) if knobs.transpose_linear else weight

    linear_attrs = {"parameter_layout": {"weight": knobs.layout_note}} if knobs.layout_note is not None else None

    with SyntheticRecorder(path, framework=knobs.framework) as rec:
        net = rec.module("", "TinyNet")
        embed = rec.module("embed", "Linear", net, {"weight": stored(w["embed.weight"])}, attrs=linear_attrs)
        blocks = rec.module("blocks", "ModuleList", net)
        block_nodes = []
        for i in range(knobs.blocks):
            b = rec.module(f"blocks.{i}", "Block", blocks)
            ln = rec.module(f"blocks.{i}.{ln_name}", "LayerNorm", b, {"weight": w[f"{i}.ln.weight"], "bias": w[f"{i}.ln.bias"]})
            parent = b
            wrapper = None
            fc1_route = f"blocks.{i}.{fc1_name}"
            if knobs.wrap_fc1:
                wrapper = rec.module(f"blocks.{i}.{fc1_name}", "Sequential", b)
                parent, fc1_route = wrapper, f"blocks.{i}.{fc1_name}.0"
            fc1 = rec.module(fc1_route, "Linear", parent, {"weight": stored(w[f"{i}.fc1.weight"])}, attrs=linear_attrs)
            act = rec.module(f"blocks.{i}.act", "GELU", b)
            fc2 = rec.module(f"blocks.{i}.{fc2_name}", "Linear", b, {"weight": stored(w[f"{i}.fc2.weight"])}, attrs=linear_attrs)
            block_nodes.append((b, ln, wrapper, fc1, act, fc2))
        head = rec.module("head", "Linear", net, {"weight": stored(w["head.weight"])}, attrs=linear_attrs)
        for _ in range(steps):
            with rec.forward(net, x) as top:
                with rec.forward(embed, x) as c:
                    h = c.output(_linear(x, w["embed.weight"], knobs.einsum))
                for i, (b, ln, wrapper, fc1, act, fc2) in enumerate(block_nodes):
                    buggy = i == knobs.bug_block
                    eps = knobs.bug_ln_eps if buggy and knobs.bug_ln_eps is not None else knobs.ln_eps
                    gelu = knobs.bug_gelu if buggy and knobs.bug_gelu is not None else knobs.gelu
                    with rec.forward(b, h) as cb:
                        with rec.forward(ln, h) as c:
                            n = c.output(_layer_norm(h, w[f"{i}.ln.weight"], w[f"{i}.ln.bias"], eps))
                        if buggy and knobs.inside_parent_scale != 1.0:
                            n = (n * np.float32(knobs.inside_parent_scale)).astype(np.float32)
                        if wrapper is not None:
                            with rec.forward(wrapper, n) as cw:
                                with rec.forward(fc1, n) as c:
                                    u = c.output(_linear(n, w[f"{i}.fc1.weight"], knobs.einsum))
                                cw.output(u)
                        else:
                            with rec.forward(fc1, n) as c:
                                u = c.output(_linear(n, w[f"{i}.fc1.weight"], knobs.einsum))
                        with rec.forward(act, u) as c:
                            g = c.output(_gelu(u, gelu))
                        with rec.forward(fc2, g) as c:
                            o = c.output(_linear(g, w[f"{i}.fc2.weight"], knobs.einsum))
                        h = cb.output((h + o).astype(np.float32))
                with rec.forward(head, h) as c:
                    y = c.output(_linear(h, w["head.weight"], knobs.einsum))
                top.output(y)
            rec.end_step()
    return path


def record_linear_chain(
    path: Path, wrong_backward_at: int | None = None, depth: int = 4, wrong_update_at: int | None = None
) -> Path:
    """A chain of Linear layers with forward, backward (loss = sum of outputs) and an SGD update.

    ``wrong_backward_at``: that layer's input gradient is doubled (a wrong custom backward).
    ``wrong_update_at``: that layer's update uses twice the learning rate.
    """
    rng = np.random.default_rng(7)
    weights = [(rng.standard_normal((8, 8)) / 3).astype(np.float32) for _ in range(depth)]
    x = rng.standard_normal((2, 8)).astype(np.float32)
    with SyntheticRecorder(path) as rec:
        net = rec.module("", "Chain")
        layers = [rec.module(f"l{i}", "Linear", net, {"weight": weights[i]}) for i in range(depth)]
        activations = [x]
        with rec.forward(net, x) as top:
            h = x
            for layer, weight in zip(layers, weights):
                with rec.forward(layer, h) as c:
                    h = c.output((h @ weight.T).astype(np.float32))
                activations.append(h)
            top.output(h)
        grad = np.ones_like(h)
        grad_out_of_net = grad
        for i in reversed(range(depth)):
            grad_in = (grad @ weights[i]).astype(np.float32)
            if i == wrong_backward_at:
                grad_in = grad_in * np.float32(2)
            rec.backward(layers[i], [grad], [grad_in])
            weight_grad = (grad.T @ activations[i]).astype(np.float32)
            rec.parameter_grads(layers[i], {"weight": weight_grad})
            lr = np.float32(0.2 if i == wrong_update_at else 0.1)
            rec.update(layers[i], {"weight": (weights[i] - lr * weight_grad).astype(np.float32)})
            grad = grad_in
        rec.backward(net, [grad_out_of_net], [grad])
        rec.end_step()
    return path
