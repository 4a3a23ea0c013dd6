"""Two bugs in nanoGPT's attention, each one line of its forward (``model.py``), as a port gets them.

Installed on one block's attention with :func:`install` (the instance's ``forward``): the module
keeps its class and route, so the diff must find the bug by comparing what the code computes.
"""

from __future__ import annotations

import math
import types

import torch
import torch.nn.functional as F

from .model import CausalSelfAttention


def scale_bug(self: CausalSelfAttention, x: torch.Tensor) -> torch.Tensor:
    """Scores divided by the head size instead of its square root."""
    B, T, C = x.size()
    q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
    k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
    q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
    v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
    att = (q @ k.transpose(-2, -1)) * (1.0 / k.size(-1))  # the bug: not math.sqrt(k.size(-1))
    att = att.masked_fill(self.bias[:, :, :T, :T] == 0, float("-inf"))
    att = F.softmax(att, dim=-1)
    y = att @ v
    y = y.transpose(1, 2).contiguous().view(B, T, C)
    return self.resid_dropout(self.c_proj(y))


def mask_bug(self: CausalSelfAttention, x: torch.Tensor) -> torch.Tensor:
    """The causal mask sliced one row too low: each token also sees the next one."""
    B, T, C = x.size()
    q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
    k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
    q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
    v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
    att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
    att = att.masked_fill(self.bias[:, :, 1 : T + 1, :T] == 0, float("-inf"))  # the bug: 1 : T + 1
    att = F.softmax(att, dim=-1)
    y = att @ v
    y = y.transpose(1, 2).contiguous().view(B, T, C)
    return self.resid_dropout(self.c_proj(y))


def install(attention: CausalSelfAttention, bug: types.FunctionType) -> None:
    attention.forward = types.MethodType(bug, attention)  # type: ignore[method-assign]
