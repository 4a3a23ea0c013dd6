"""A PaddlePaddle port of a small GPT whose attention is renamed and regrouped the way ports are:
``attn.q_proj`` -> ``self_attn.q``, the causal mask built by a differently named module, the MLP
called ``ffn`` with ``up``/``down``. A wrong weight in the output projection must be named there,
not blamed on the block around it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import tracespec

WIDTH, HEADS, HIDDEN, VOCAB, LAYERS = 16, 2, 32, 23, 2
TOKENS = np.array([[3, 7, 1, 9, 4, 2], [5, 5, 8, 0, 2, 6]], dtype=np.int64)


def _weights() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    found = {
        "embed": rng.standard_normal((VOCAB, WIDTH)).astype(np.float32) * 0.5,
        "head": rng.standard_normal((VOCAB, WIDTH)).astype(np.float32) * 0.3,
    }
    for i in range(LAYERS):
        for name, shape in (
            ("q", (WIDTH, WIDTH)),
            ("k", (WIDTH, WIDTH)),
            ("v", (WIDTH, WIDTH)),
            ("o", (WIDTH, WIDTH)),
            ("fc1", (HIDDEN, WIDTH)),
            ("fc2", (WIDTH, HIDDEN)),
        ):
            found[f"{i}.{name}.w"] = (rng.standard_normal(shape) / np.sqrt(shape[1])).astype(np.float32)
            found[f"{i}.{name}.b"] = (rng.standard_normal(shape[0]) * 0.1).astype(np.float32)
    return found


def record_torch(path: Path) -> Path:
    import torch
    from torch import nn

    w = _weights()

    class CausalMask(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            size = x.shape[1]
            return torch.triu(torch.full((size, size), float("-inf")), diagonal=1)

    class Attention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mask = CausalMask()
            self.q_proj, self.k_proj, self.v_proj, self.o_proj = (nn.Linear(WIDTH, WIDTH) for _ in range(4))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            batch, size, _ = x.shape
            split = (batch, size, HEADS, WIDTH // HEADS)
            q, k, v = (proj(x).view(split).transpose(1, 2) for proj in (self.q_proj, self.k_proj, self.v_proj))
            scores = q @ k.transpose(-1, -2) / (WIDTH // HEADS) ** 0.5 + self.mask(x)
            return self.o_proj((torch.softmax(scores, -1) @ v).transpose(1, 2).reshape(batch, size, WIDTH))

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ln1, self.attn, self.ln2 = nn.LayerNorm(WIDTH), Attention(), nn.LayerNorm(WIDTH)
            self.mlp = nn.Sequential(nn.Linear(WIDTH, HIDDEN), nn.GELU(), nn.Linear(HIDDEN, WIDTH))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = x + self.attn(self.ln1(x))
            return x + self.mlp(self.ln2(x))

    class GPT(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(VOCAB, WIDTH)
            self.blocks = nn.ModuleList(Block() for _ in range(LAYERS))
            self.head = nn.Linear(WIDTH, VOCAB, bias=False)

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            x = self.embed(ids)
            for block in self.blocks:
                x = block(x)
            return self.head(x)

    model = GPT()
    with torch.no_grad():
        model.embed.weight.copy_(torch.from_numpy(w["embed"]))
        model.head.weight.copy_(torch.from_numpy(w["head"]))
        for i, block in enumerate(model.blocks):
            layers = {
                "q": block.attn.q_proj,
                "k": block.attn.k_proj,
                "v": block.attn.v_proj,
                "o": block.attn.o_proj,
                "fc1": block.mlp[0],
                "fc2": block.mlp[2],
            }
            for name, layer in layers.items():
                layer.weight.copy_(torch.from_numpy(w[f"{i}.{name}.w"]))
                layer.bias.copy_(torch.from_numpy(w[f"{i}.{name}.b"]))
    with tracespec.record(model, path, capture="full") as rec:
        model(torch.from_numpy(TOKENS)).square().mean().backward()
        rec.step()
    return path


def record_paddle(path: Path, o_weight_noise: float = 0.0) -> Path:
    import paddle
    from paddle import nn

    w = _weights()

    class MaskBuilder(nn.Layer):
        def forward(self, x: paddle.Tensor) -> paddle.Tensor:
            size = x.shape[1]
            return paddle.triu(paddle.full((size, size), float("-inf")), diagonal=1)

    class SelfAttention(nn.Layer):
        def __init__(self) -> None:
            super().__init__()
            self.q, self.k, self.v = nn.Linear(WIDTH, WIDTH), nn.Linear(WIDTH, WIDTH), nn.Linear(WIDTH, WIDTH)
            self.causal_mask = MaskBuilder()
            self.o = nn.Linear(WIDTH, WIDTH)

        def forward(self, x: paddle.Tensor) -> paddle.Tensor:
            batch, size, _ = x.shape
            split = [batch, size, HEADS, WIDTH // HEADS]
            q, k, v = (proj(x).reshape(split).transpose([0, 2, 1, 3]) for proj in (self.q, self.k, self.v))
            scores = q @ k.transpose([0, 1, 3, 2]) / (WIDTH // HEADS) ** 0.5 + self.causal_mask(x)
            out = (nn.functional.softmax(scores, -1) @ v).transpose([0, 2, 1, 3]).reshape([batch, size, WIDTH])
            return self.o(out)

    class FFN(nn.Layer):
        def __init__(self) -> None:
            super().__init__()
            self.up, self.act, self.down = nn.Linear(WIDTH, HIDDEN), nn.GELU(), nn.Linear(HIDDEN, WIDTH)

        def forward(self, x: paddle.Tensor) -> paddle.Tensor:
            return self.down(self.act(self.up(x)))

    class Layer(nn.Layer):
        def __init__(self) -> None:
            super().__init__()
            self.norm1, self.self_attn, self.norm2, self.ffn = nn.LayerNorm(WIDTH), SelfAttention(), nn.LayerNorm(WIDTH), FFN()

        def forward(self, x: paddle.Tensor) -> paddle.Tensor:
            x = x + self.self_attn(self.norm1(x))
            return x + self.ffn(self.norm2(x))

    class Model(nn.Layer):
        def __init__(self) -> None:
            super().__init__()
            self.tok = nn.Embedding(VOCAB, WIDTH)
            self.layers = nn.LayerList([Layer() for _ in range(LAYERS)])
            self.lm_head = nn.Linear(WIDTH, VOCAB, bias_attr=False)

        def forward(self, ids: paddle.Tensor) -> paddle.Tensor:
            x = self.tok(ids)
            for layer in self.layers:
                x = layer(x)
            return self.lm_head(x)

    model = Model()
    model.tok.weight.set_value(w["embed"])
    model.lm_head.weight.set_value(w["head"].T)
    for i, layer in enumerate(model.layers):
        layers = {
            "q": layer.self_attn.q,
            "k": layer.self_attn.k,
            "v": layer.self_attn.v,
            "o": layer.self_attn.o,
            "fc1": layer.ffn.up,
            "fc2": layer.ffn.down,
        }
        for name, linear in layers.items():
            weight = w[f"{i}.{name}.w"].T.copy()
            if name == "o" and i == 1:
                weight += o_weight_noise * np.abs(weight).mean()
            linear.weight.set_value(weight)
            linear.bias.set_value(w[f"{i}.{name}.b"])
    with tracespec.record(model, path, capture="full") as rec:
        model(paddle.to_tensor(TOKENS)).square().mean().backward()
        rec.step()
    return path


@pytest.fixture(scope="module")
def torch_trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return record_torch(tmp_path_factory.mktemp("gpt") / "torch")


def test_the_renamed_port_passes_with_every_call_compared(torch_trace: Path, tmp_path: Path) -> None:
    verdict = tracespec.compare(torch_trace, record_paddle(tmp_path / "paddle"))
    assert verdict.status == "pass", verdict.first_divergence
    calls = verdict.coverage["ranks"]["0"]["calls"]
    assert calls["fraction_a"] == 1.0 and calls["fraction_b"] == 1.0
    pairs = {(n["a"]["route"], n["b"]["route"]) for n in verdict.nodes if n["stage"] == "forward"}
    assert {
        ("blocks.1.attn.o_proj", "layers.1.self_attn.o"),
        ("blocks.0.attn.mask", "layers.0.self_attn.causal_mask"),
        ("blocks.1.mlp.2", "layers.1.ffn.down"),
        ("blocks.1.attn", "layers.1.self_attn"),
    } <= pairs


def test_a_wrong_output_projection_is_named_not_its_block(torch_trace: Path, tmp_path: Path) -> None:
    verdict = tracespec.compare(torch_trace, record_paddle(tmp_path / "paddle", o_weight_noise=0.05))
    first = verdict.first_divergence
    assert first is not None and first["kind"] == "introduced" and first["stage"] == "forward"
    assert (first["a"]["route"], first["b"]["route"]) == ("blocks.1.attn.o_proj", "layers.1.self_attn.o")
    assert "its own parameter[weight] differ(s)" in first["evidence"]
    contains = {n["a"]["route"] for n in verdict.nodes if n["stage"] == "forward" and n["divergence"] == "contains"}
    assert {"blocks.1", "blocks.1.attn"} <= contains
