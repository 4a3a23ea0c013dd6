"""A tiny GPT-like PyTorch model with switches for the porting bugs the diff must find.

Every variant builds the same modules (same classes, routes and weights for a given seed) so that
the two traces align by route; the switches change only what a module computes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import tracespec

WIDTH, HEADS, HIDDEN, VOCAB, SEQ = 32, 4, 64, 50, 6


@dataclass(frozen=True)
class Variant:
    """How a run differs from the reference. ``bug_block`` is where the bug sits."""

    bug_block: int = 1
    ln_eps: float | None = None  # ln_1 epsilon in the bug block
    gelu_tanh: bool = False  # GELU approximation in the bug block
    attention_scale: float | None = None  # instead of 1/sqrt(head_dim), in the bug block
    half_round_trip: bool = False  # the MLP of the bug block rounds its hidden activation to fp16
    wrong_backward: bool = False  # the bug block's activation uses a custom Function with a wrong backward
    einsum: bool = False  # every projection computes with einsum instead of F.linear
    train: bool = False  # dropout left on
    weight_noise: float = 0.0  # the bug block's mlp.fc1.weight times (1 + weight_noise * N(0, 1))


class _GeluFunction(torch.autograd.Function):
    """GELU with a hand-written backward (exact for erf); ``wrong`` drops the density term."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, tanh: bool, wrong: bool) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        ctx.wrong = wrong
        return F.gelu(x, approximate="tanh" if tanh else "none")

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        cdf = 0.5 * (1 + torch.erf(x / math.sqrt(2)))
        pdf = torch.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)
        derivative = cdf if ctx.wrong else cdf + x * pdf
        return grad * derivative, None, None


class Activation(nn.Module):
    """GELU through a custom autograd Function (so one run can carry a wrong backward)."""

    def __init__(self, tanh: bool, wrong_backward: bool) -> None:
        super().__init__()
        self.tanh, self.wrong_backward = tanh, wrong_backward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _GeluFunction.apply(x, self.tanh, self.wrong_backward)


class Projection(nn.Linear):
    """A Linear whose product is computed with F.linear or, after a refactor, einsum."""

    def __init__(self, n_in: int, n_out: int, einsum: bool) -> None:
        super().__init__(n_in, n_out)
        self.einsum = einsum

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.einsum:
            return torch.einsum("...i,oi->...o", x, self.weight) + self.bias
        return F.linear(x, self.weight, self.bias)


class Attention(nn.Module):
    def __init__(self, einsum: bool, scale: float | None) -> None:
        super().__init__()
        self.q = Projection(WIDTH, WIDTH, einsum)
        self.k = Projection(WIDTH, WIDTH, einsum)
        self.v = Projection(WIDTH, WIDTH, einsum)
        self.o = Projection(WIDTH, WIDTH, einsum)
        self.scale = scale if scale is not None else 1 / math.sqrt(WIDTH // HEADS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq, _ = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, seq, HEADS, WIDTH // HEADS).transpose(1, 2)

        q, k, v = heads(self.q(x)), heads(self.k(x)), heads(self.v(x))
        scores = (q @ k.transpose(-1, -2)) * self.scale
        mask = torch.ones(seq, seq, dtype=torch.bool).tril()
        weights = scores.masked_fill(~mask, float("-inf")).softmax(-1)
        return self.o((weights @ v).transpose(1, 2).reshape(batch, seq, WIDTH))


class MLP(nn.Module):
    def __init__(self, einsum: bool, act: Activation, half_round_trip: bool) -> None:
        super().__init__()
        self.fc1 = Projection(WIDTH, HIDDEN, einsum)
        self.act = act
        self.fc2 = Projection(HIDDEN, WIDTH, einsum)
        self.half_round_trip = half_round_trip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        if self.half_round_trip:
            h = h.half().float()
        return self.fc2(self.act(h))


class Block(nn.Module):
    def __init__(self, index: int, variant: Variant) -> None:
        super().__init__()
        bug = index == variant.bug_block
        eps = variant.ln_eps if bug and variant.ln_eps is not None else 1e-5
        self.ln_1 = nn.LayerNorm(WIDTH, eps=eps)
        self.attn = Attention(variant.einsum, variant.attention_scale if bug else None)
        self.ln_2 = nn.LayerNorm(WIDTH)
        act = Activation(bug and variant.gelu_tanh, bug and variant.wrong_backward)
        self.mlp = MLP(variant.einsum, act, bug and variant.half_round_trip)
        self.drop = nn.Dropout(0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.drop(self.mlp(self.ln_2(x)))


class TinyGPT(nn.Module):
    def __init__(self, variant: Variant = Variant(), blocks: int = 3) -> None:
        super().__init__()
        self.wte = nn.Embedding(VOCAB, WIDTH)
        self.blocks = nn.ModuleList(Block(i, variant) for i in range(blocks))
        self.ln_f = nn.LayerNorm(WIDTH)
        self.head = Projection(WIDTH, VOCAB, variant.einsum)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.wte(tokens)
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


def build(variant: Variant = Variant(), seed: int = 0) -> TinyGPT:
    torch.manual_seed(seed)
    model = TinyGPT(variant)
    with torch.no_grad():  # GPT-2's initialisation scale: small embeddings and projections
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.normal_(0, 0.02 if "wte" in name else 0.2)
            elif name.endswith("bias") and "ln" not in name:
                p.normal_(0, 0.02)
        if variant.weight_noise:
            weight = model.blocks[variant.bug_block].mlp.fc1.weight
            weight.mul_(1 + variant.weight_noise * torch.randn(weight.shape, generator=torch.Generator().manual_seed(5)))
    return model.train(variant.train).eval() if not variant.train else model.train()


def record_run(path: Path, variant: Variant = Variant(), backward: bool = True, capture: str = "full") -> Path:
    """Record one forward (and backward) step of the variant into ``path``."""
    model = build(variant)
    tokens = torch.tensor([[1, 5, 9, 2, 7, 3], [4, 4, 8, 0, 1, 6]])
    torch.manual_seed(1234)
    with tracespec.record(model, path, capture=capture, durable=False) as rec:
        logits = model(tokens)
        if backward:
            F.cross_entropy(logits.reshape(-1, VOCAB), tokens.roll(-1, 1).reshape(-1)).backward()
        rec.step()
    return path
