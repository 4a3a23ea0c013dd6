"""A PyTorch model whose correct result depends on the CPU thread count: it centres a large
activation by its global mean (a batch statistic), and torch splits that sum across threads, so
each thread count rounds it differently, and the centring cancels most of the magnitude."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

import tracespec


class Centre(nn.Module):
    """Subtracts the mean over the whole batch (a sum over 131k elements: split across threads)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - x.mean()


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(256, 256)
        self.centre = Centre()
        self.act = nn.Tanh()
        self.fc2 = nn.Linear(256, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.centre(self.fc1(x))))


def record_with_threads(path: Path, threads: int, weight_scale: float = 1.0) -> Path:
    """One forward and backward step with ``threads`` CPU threads; ``weight_scale`` multiplies
    ``fc2.weight`` (1 + 1e-3 is a real, small bug)."""
    torch.manual_seed(0)
    net = Net()
    with torch.no_grad():
        net.fc1.bias.add_(300.0)  # a large common offset, removed again by the centring
        net.fc2.weight.mul_(weight_scale)
    x = torch.randn(512, 256)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with tracespec.record(net, path, capture="full", durable=False) as rec:
            net(x).square().mean().backward()
            rec.step()
    finally:
        torch.set_num_threads(previous)
    return path
