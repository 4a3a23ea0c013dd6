"""Real traces of a small PyTorch model and a copy with one bug, their verdict, and a page loader."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from report_browser import CULPRIT, Page, run_chromium
from torch import nn

import tracespec


class MLP(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, 2 * width)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(2 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.mlp = MLP(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(self.norm(x))


class Net(nn.Module):
    def __init__(self, width: int = 16, depth: int = 5) -> None:
        super().__init__()
        self.embed = nn.Linear(8, width)
        self.blocks = nn.ModuleList(Block(width) for _ in range(depth))
        self.head = nn.Linear(width, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def _record(model: nn.Module, x: torch.Tensor, path: Path) -> None:
    with tracespec.record(model, path, capture="full", overwrite=True) as rec:
        model(x).pow(2).mean().backward()
        rec.step()


@pytest.fixture(scope="session")
def bug_traces(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Traces of ``Net`` and of a copy whose ``blocks.2.mlp.fc1`` weight is off by 1%, and their verdict."""
    folder = tmp_path_factory.mktemp("report")
    torch.manual_seed(0)
    model = Net()
    x = torch.randn(4, 6, 8)
    buggy = Net()
    buggy.load_state_dict(model.state_dict())
    with torch.no_grad():
        buggy.get_submodule(CULPRIT).weight.mul_(1.01)
    _record(model, x, folder / "a")
    _record(buggy, x, folder / "b")
    verdict = tracespec.compare(folder / "a", folder / "b")
    return {"a": folder / "a", "b": folder / "b", "verdict": verdict.to_json(), "folder": folder}


@pytest.fixture(scope="session")
def open_page() -> Any:
    """``open_page(path, fragment="")`` -> :class:`Page`: the DOM after the scripts ran, and the console."""

    def load(path: Path, fragment: str = "") -> Page:
        dom, console = run_chromium(path.resolve().as_uri() + fragment, "--dump-dom")
        return Page(dom, console)

    return load
