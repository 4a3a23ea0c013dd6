"""Two real PyTorch trainings recorded for many steps, one nudged at a known step: long-run fixtures."""

from __future__ import annotations

from pathlib import Path

import torch

import tracespec

NUDGED_LAYER = 4
"""Index in the ``nn.Sequential`` of the Linear whose weight B scales by 1 + 1e-4 (route ``"4"``)."""


def record_training(path: Path, *, steps: int, nudge_step: int | None, capture: str = "stats", blocks: int = 4) -> Path:
    """Train a ``blocks``-block MLP (Linear + Tanh) with Adam for ``steps`` steps, recorded at
    ``capture``; at ``nudge_step``, before its forward, scale the weight of layer
    :data:`NUDGED_LAYER` by 1 + 1e-4 (``None``: never)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[layer for _ in range(blocks) for layer in (torch.nn.Linear(8, 8), torch.nn.Tanh())])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(4, 8, generator=torch.Generator().manual_seed(1))
    with tracespec.record(model, path, capture=capture, optimizer=optimizer, durable=False, overwrite=True) as rec:
        for step in range(steps):
            if step == nudge_step:
                with torch.no_grad():
                    model[NUDGED_LAYER].weight.mul_(1 + 1e-4)
            optimizer.zero_grad()
            model(x).square().mean().backward()
            optimizer.step()
            rec.step()
    return path
