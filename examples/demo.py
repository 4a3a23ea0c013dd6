"""The README demo: a PyTorch model and its PaddlePaddle port with a realistic porting bug.

Both frameworks compute a small two-block transformer encoder from the same weights. The port
uses Paddle's layouts and its own submodule names (``layers`` instead of ``blocks``...), as a
real port does. One line of it is wrong: block 1's feed-forward uses the tanh approximation of
GELU (``approximate=True``), while PyTorch's ``nn.GELU()`` is exact. The outputs differ by about
1e-4: too small to see by eye, far too large for float32 noise.

The demo records one training step (forward and backward) of each into a trace, then runs
``tracespec diff`` on them, which names the module that introduced the error. Run it with
``bash .ci/demo``; pass ``--fixed`` to see the same port without the bug pass.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np

import tracespec

RUNS = Path("runs")
WIDTH, HEADS, HIDDEN, VOCAB, BLOCKS, SEQ = 32, 4, 64, 50, 2, 6


def make_weights(seed: int = 0) -> dict[str, np.ndarray]:
    """Weights in PyTorch's layout (Linear weight ``[out, in]``), keyed by PyTorch parameter name."""
    rng = np.random.default_rng(seed)

    def normal(*shape: int, scale: float = 0.2) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    w = {"embed.weight": normal(VOCAB, WIDTH, scale=1.0), "head.weight": normal(VOCAB, WIDTH), "head.bias": normal(VOCAB)}
    for i in range(BLOCKS):
        p = f"blocks.{i}."
        for name in ("q", "k", "v", "o"):
            w[p + f"attn.{name}.weight"], w[p + f"attn.{name}.bias"] = normal(WIDTH, WIDTH), normal(WIDTH)
        w[p + "mlp.fc1.weight"], w[p + "mlp.fc1.bias"] = normal(HIDDEN, WIDTH), normal(HIDDEN)
        w[p + "mlp.fc2.weight"], w[p + "mlp.fc2.bias"] = normal(WIDTH, HIDDEN), normal(WIDTH)
        for ln in ("ln1", "ln2"):
            w[p + f"{ln}.weight"] = 1 + normal(WIDTH, scale=0.1)
            w[p + f"{ln}.bias"] = normal(WIDTH, scale=0.1)
    return w


def record_torch(weights: dict[str, np.ndarray], tokens: np.ndarray, out: Path) -> None:
    import torch
    from torch import nn

    class Attention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.q, self.k, self.v, self.o = (nn.Linear(WIDTH, WIDTH) for _ in range(4))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b, t, _ = x.shape
            split = lambda y: y.view(b, t, HEADS, WIDTH // HEADS).transpose(1, 2)  # noqa: E731
            q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
            scores = (q @ k.transpose(-1, -2)) / (WIDTH // HEADS) ** 0.5
            y = torch.softmax(scores, dim=-1) @ v
            return self.o(y.transpose(1, 2).reshape(b, t, WIDTH))

    class MLP(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.act, self.fc2 = nn.Linear(WIDTH, HIDDEN), nn.GELU(), nn.Linear(HIDDEN, WIDTH)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc2(self.act(self.fc1(x)))

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ln1, self.attn, self.ln2, self.mlp = nn.LayerNorm(WIDTH), Attention(), nn.LayerNorm(WIDTH), MLP()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = x + self.attn(self.ln1(x))
            return x + self.mlp(self.ln2(x))

    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(VOCAB, WIDTH)
            self.blocks = nn.ModuleList(Block() for _ in range(BLOCKS))
            self.head = nn.Linear(WIDTH, VOCAB)

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            x = self.embed(ids)
            for block in self.blocks:
                x = block(x)
            return self.head(x)

    model = Encoder()
    model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
    ids = torch.from_numpy(tokens)
    with tracespec.record(model, out, capture="full", overwrite=True) as rec:
        logits = model(ids)
        logits.logsumexp(-1).mean().backward()
        rec.step()


def record_paddle(weights: dict[str, np.ndarray], tokens: np.ndarray, out: Path, bug: bool) -> None:
    warnings.filterwarnings("ignore", message="No ccache found")  # paddle's import-time notice
    import paddle
    import paddle.nn.functional as F
    from paddle import nn

    class SelfAttention(nn.Layer):
        def __init__(self) -> None:
            super().__init__()
            self.query, self.key, self.value, self.out = (nn.Linear(WIDTH, WIDTH) for _ in range(4))

        def forward(self, x: paddle.Tensor) -> paddle.Tensor:
            b, t, _ = x.shape
            split = lambda y: y.reshape([b, t, HEADS, WIDTH // HEADS]).transpose([0, 2, 1, 3])  # noqa: E731
            q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
            scores = paddle.matmul(q, k, transpose_y=True) / (WIDTH // HEADS) ** 0.5
            y = paddle.matmul(F.softmax(scores, axis=-1), v)
            return self.out(y.transpose([0, 2, 1, 3]).reshape([b, t, WIDTH]))

    class FeedForward(nn.Layer):
        def __init__(self, approximate: bool) -> None:
            super().__init__()
            self.fc1, self.act, self.fc2 = nn.Linear(WIDTH, HIDDEN), nn.GELU(approximate=approximate), nn.Linear(HIDDEN, WIDTH)

        def forward(self, x: paddle.Tensor) -> paddle.Tensor:
            return self.fc2(self.act(self.fc1(x)))

    class Layer(nn.Layer):
        def __init__(self, approximate: bool) -> None:
            super().__init__()
            self.norm1, self.attention = nn.LayerNorm(WIDTH), SelfAttention()
            self.norm2, self.ffn = nn.LayerNorm(WIDTH), FeedForward(approximate)

        def forward(self, x: paddle.Tensor) -> paddle.Tensor:
            x = x + self.attention(self.norm1(x))
            return x + self.ffn(self.norm2(x))

    class Encoder(nn.Layer):
        def __init__(self) -> None:
            super().__init__()
            self.embedding = nn.Embedding(VOCAB, WIDTH)
            # The porting bug: block 1's GELU uses the tanh approximation.
            self.layers = nn.LayerList([Layer(approximate=bug and i == 1) for i in range(BLOCKS)])
            self.lm_head = nn.Linear(WIDTH, VOCAB)

        def forward(self, ids: paddle.Tensor) -> paddle.Tensor:
            x = self.embedding(ids)
            for layer in self.layers:
                x = layer(x)
            return self.lm_head(x)

    renames = {
        "embed.": "embedding.",
        "blocks.": "layers.",
        "head.": "lm_head.",
        ".ln1.": ".norm1.",
        ".ln2.": ".norm2.",
        ".attn.": ".attention.",
        ".mlp.": ".ffn.",
        ".q.": ".query.",
        ".k.": ".key.",
        ".v.": ".value.",
        ".o.": ".out.",
    }
    state = {}
    for name, value in weights.items():
        is_linear_weight = name.endswith(".weight") and value.ndim == 2 and not name.startswith("embed")
        for old, new in renames.items():
            name = name.replace(old, new) if old.startswith(".") else (new + name[len(old) :] if name.startswith(old) else name)
        state[name] = value.T.copy() if is_linear_weight else value  # Paddle Linear is [in, out]
    paddle.set_device("cpu")
    model = Encoder()
    model.set_state_dict({k: paddle.to_tensor(v) for k, v in state.items()})
    ids = paddle.to_tensor(tokens)
    with tracespec.record(model, out, capture="full", overwrite=True) as rec:
        logits = model(ids)
        paddle.logsumexp(logits, axis=-1).mean().backward()
        rec.step()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fixed", action="store_true", help="record the port without its bug")
    args = parser.parse_args()
    weights = make_weights()
    tokens = np.random.default_rng(1).integers(0, VOCAB, size=(2, SEQ)).astype(np.int64)
    torch_run, paddle_run = RUNS / "demo_torch", RUNS / "demo_paddle"
    print(f"recording PyTorch into {torch_run} and the Paddle port into {paddle_run} ...", flush=True)
    record_torch(weights, tokens, torch_run)
    record_paddle(weights, tokens, paddle_run, bug=not args.fixed)
    options = ["--json", str(RUNS / "demo_verdict.json"), "--html", str(RUNS / "demo_report.html"), "--brief"]
    print("$ tracespec diff", torch_run, paddle_run, *options, flush=True)
    status = subprocess.run([sys.executable, "-m", "tracespec.cli", "diff", str(torch_run), str(paddle_run), *options]).returncode
    expected = 0 if args.fixed else 1
    print(
        f"tracespec diff exited {status} ({'as expected' if status == expected else 'UNEXPECTED'}); "
        f"without --brief it also shows the error growth and the tolerances."
    )
    return 0 if status == expected else 1


if __name__ == "__main__":
    sys.exit(main())
