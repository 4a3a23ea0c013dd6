"""A Paddle port of nanoGPT (``model.py`` beside it), written the way Paddle code usually is.

It is not a line-by-line copy: Paddle idioms where they differ, as in PaddleNLP's GPT. The
attention multiplies by K with ``matmul(transpose_y=True)`` and masks with ``where``, where nanoGPT
transposes K and calls ``masked_fill``; the output head multiplies by the token embedding
(``transpose_y=True``) instead of holding a Linear tied to it. ``scale_bug`` divides the attention
scores by the head size instead of its square root (a real bug of early ports).
"""

from __future__ import annotations

import math

import paddle
import paddle.nn.functional as F
from paddle import nn

from .model import GPTConfig


class LayerNorm(nn.Layer):
    def __init__(self, ndim: int, bias: bool) -> None:
        super().__init__()
        self.weight = self.create_parameter([ndim], default_initializer=nn.initializer.Constant(1.0))
        self.bias = self.create_parameter([ndim], is_bias=True) if bias else None

    def forward(self, input: paddle.Tensor) -> paddle.Tensor:
        return F.layer_norm(input, self.weight.shape, self.weight, self.bias, 1e-5)


class CausalSelfAttention(nn.Layer):
    def __init__(self, config: GPTConfig, scale_bug: bool = False) -> None:
        super().__init__()
        bias = None if config.bias else False
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias_attr=bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias_attr=bias)
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.scale_bug = scale_bug
        size = config.block_size
        self.register_buffer("bias", paddle.tril(paddle.ones([size, size])).reshape([1, 1, size, size]))

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(3, axis=2)
        heads = [B, T, self.n_head, C // self.n_head]
        q = q.reshape(heads).transpose([0, 2, 1, 3])
        k = k.reshape(heads).transpose([0, 2, 1, 3])
        v = v.reshape(heads).transpose([0, 2, 1, 3])
        scale = 1.0 / (k.shape[-1] if self.scale_bug else math.sqrt(k.shape[-1]))
        att = paddle.matmul(q, k, transpose_y=True) * scale
        att = paddle.where(self.bias[:, :, :T, :T] == 0, paddle.full_like(att, float("-inf")), att)
        att = F.softmax(att, axis=-1)
        att = self.attn_dropout(att)
        y = paddle.matmul(att, v)
        y = y.transpose([0, 2, 1, 3]).reshape([B, T, C])
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Layer):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        bias = None if config.bias else False
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias_attr=bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias_attr=bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Layer):
    def __init__(self, config: GPTConfig, scale_bug: bool = False) -> None:
        super().__init__()
        self.ln_1 = LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config, scale_bug)
        self.ln_2 = LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Layer):
    def __init__(self, config: GPTConfig, scale_bug_in: int | None = None) -> None:
        super().__init__()
        self.config = config
        self.transformer = nn.LayerDict({
            "wte": nn.Embedding(config.vocab_size, config.n_embd),
            "wpe": nn.Embedding(config.block_size, config.n_embd),
            "drop": nn.Dropout(config.dropout),
            "h": nn.LayerList([Block(config, scale_bug=i == scale_bug_in) for i in range(config.n_layer)]),
            "ln_f": LayerNorm(config.n_embd, bias=config.bias),
        })

    def forward(self, idx: paddle.Tensor, targets: paddle.Tensor | None = None) -> tuple[paddle.Tensor, paddle.Tensor | None]:
        t = idx.shape[1]
        pos = paddle.arange(0, t, dtype="int64")
        x = self.transformer["drop"](self.transformer["wte"](idx) + self.transformer["wpe"](pos))
        for block in self.transformer["h"]:
            x = block(x)
        x = self.transformer["ln_f"](x)
        logits = paddle.matmul(x, self.transformer["wte"].weight, transpose_y=True)
        loss = None if targets is None else F.cross_entropy(logits.reshape([-1, logits.shape[-1]]), targets.reshape([-1]))
        return logits, loss


def load_torch_weights(model: GPT, state: dict[str, object]) -> None:
    """Load nanoGPT's ``state_dict()`` (numpy arrays): Linear weights transposed to Paddle's
    ``[in, out]``; the output head is the token embedding."""
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    for name, value in state.items():
        if name == "lm_head.weight":
            continue  # tied to transformer.wte.weight
        target = params.get(name) if name in params else buffers[name]
        is_linear = name.endswith(".weight") and value.ndim == 2 and "wte" not in name and "wpe" not in name  # type: ignore[attr-defined]
        target.set_value(value.T if is_linear else value)  # type: ignore[union-attr, attr-defined]
