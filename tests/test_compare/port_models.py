"""The same small network in PyTorch and in PaddlePaddle, sharing weights, for cross-framework diffs.

The Paddle port may use other submodule names (``renamed=True``), as a real port often does.
Weights are made once in numpy and loaded into both, each in its framework's native layout
(PyTorch ``Linear.weight`` is ``[out, in]``, Paddle's ``[in, out]``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

WIDTH, HIDDEN, VOCAB, BLOCKS = 16, 32, 20, 2
TOKENS = np.array([[1, 5, 9, 2, 7], [4, 4, 8, 0, 1]], dtype=np.int64)


def _names(renamed: bool) -> dict[str, str]:
    if renamed:
        return {
            "embed": "embedding",
            "blocks": "layers",
            "norm": "pre_norm",
            "fc1": "up",
            "fc2": "down",
            "final": "norm_out",
            "head": "lm_head",
        }
    return {"embed": "embed", "blocks": "blocks", "norm": "norm", "fc1": "fc1", "fc2": "fc2", "final": "final", "head": "head"}


def weights(seed: int = 0) -> dict[str, np.ndarray]:
    """Weights in PyTorch's layout, keyed by canonical names."""
    rng = np.random.default_rng(seed)
    w = {
        "embed": (rng.standard_normal((VOCAB, WIDTH)) * 0.5).astype(np.float32),
        "head.w": (rng.standard_normal((VOCAB, WIDTH)) * 0.3).astype(np.float32),
        "head.b": (rng.standard_normal(VOCAB) * 0.1).astype(np.float32),
    }
    for i in range(BLOCKS):
        w[f"{i}.fc1.w"] = (rng.standard_normal((HIDDEN, WIDTH)) * 0.3).astype(np.float32)
        w[f"{i}.fc1.b"] = (rng.standard_normal(HIDDEN) * 0.1).astype(np.float32)
        w[f"{i}.fc2.w"] = (rng.standard_normal((WIDTH, HIDDEN)) * 0.2).astype(np.float32)
        w[f"{i}.fc2.b"] = (rng.standard_normal(WIDTH) * 0.1).astype(np.float32)
    return w


def record_torch(path: Path) -> Path:
    import torch
    import torch.nn.functional as F
    from torch import nn

    import tracespec

    w = weights()

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm = nn.LayerNorm(WIDTH)
            self.fc1 = nn.Linear(WIDTH, HIDDEN)
            self.fc2 = nn.Linear(HIDDEN, WIDTH)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.fc2(F.gelu(self.fc1(self.norm(x))))

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(VOCAB, WIDTH)
            self.blocks = nn.ModuleList(Block() for _ in range(BLOCKS))
            self.final = nn.LayerNorm(WIDTH)
            self.head = nn.Linear(WIDTH, VOCAB)

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            x = self.embed(tokens)
            for block in self.blocks:
                x = block(x)
            return self.head(self.final(x))

    net = Net()
    with torch.no_grad():
        net.embed.weight.copy_(torch.from_numpy(w["embed"]))
        net.head.weight.copy_(torch.from_numpy(w["head.w"]))
        net.head.bias.copy_(torch.from_numpy(w["head.b"]))
        for i, block in enumerate(net.blocks):
            for name in ("fc1", "fc2"):
                getattr(block, name).weight.copy_(torch.from_numpy(w[f"{i}.{name}.w"]))
                getattr(block, name).bias.copy_(torch.from_numpy(w[f"{i}.{name}.b"]))
    net.eval()
    with tracespec.record(net, path, capture="full", durable=False) as rec:
        logits = net(torch.from_numpy(TOKENS))
        F.cross_entropy(logits.reshape(-1, VOCAB), torch.from_numpy(TOKENS).roll(-1, 1).reshape(-1)).backward()
        rec.step()
    return path


def record_paddle(path: Path, renamed: bool = False, epsilon: float = 1e-5) -> Path:
    import paddle
    import paddle.nn.functional as F
    from paddle import nn

    import tracespec

    w = weights()
    n = _names(renamed)

    class Block(nn.Layer):
        def __init__(self) -> None:
            super().__init__()
            setattr(self, n["norm"], nn.LayerNorm(WIDTH, epsilon=epsilon))
            setattr(self, n["fc1"], nn.Linear(WIDTH, HIDDEN))
            setattr(self, n["fc2"], nn.Linear(HIDDEN, WIDTH))

        def forward(self, x: paddle.Tensor) -> paddle.Tensor:
            up, down, norm = getattr(self, n["fc1"]), getattr(self, n["fc2"]), getattr(self, n["norm"])
            return x + down(F.gelu(up(norm(x))))

    class Net(nn.Layer):
        def __init__(self) -> None:
            super().__init__()
            setattr(self, n["embed"], nn.Embedding(VOCAB, WIDTH))
            setattr(self, n["blocks"], nn.LayerList([Block() for _ in range(BLOCKS)]))
            setattr(self, n["final"], nn.LayerNorm(WIDTH))
            setattr(self, n["head"], nn.Linear(WIDTH, VOCAB))

        def forward(self, tokens: paddle.Tensor) -> paddle.Tensor:
            x = getattr(self, n["embed"])(tokens)
            for block in getattr(self, n["blocks"]):
                x = block(x)
            return getattr(self, n["head"])(getattr(self, n["final"])(x))

    net = Net()
    getattr(net, n["embed"]).weight.set_value(w["embed"])
    getattr(net, n["head"]).weight.set_value(w["head.w"].T.copy())  # Paddle's [in, out]
    getattr(net, n["head"]).bias.set_value(w["head.b"])
    for i, block in enumerate(getattr(net, n["blocks"])):
        for name in ("fc1", "fc2"):
            layer = getattr(block, n[name])
            layer.weight.set_value(w[f"{i}.{name}.w"].T.copy())
            layer.bias.set_value(w[f"{i}.{name}.b"])
    net.eval()
    tokens = paddle.to_tensor(TOKENS)
    with tracespec.record(net, path, capture="full", durable=False) as rec:
        logits = net(tokens)
        F.cross_entropy(logits.reshape([-1, VOCAB]), paddle.roll(tokens, -1, 1).reshape([-1])).backward()
        rec.step()
    return path
