"""Real traces of a small PyTorch model and a copy with one bug, their verdict, and a Chromium driver."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import tracespec

CULPRIT = "blocks.2.mlp.fc1"
"""The module whose weight the buggy copy scales: the report must point at it."""


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


@dataclass(frozen=True)
class Page:
    dom: str
    console: list[str]


CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--enable-logging=stderr", "--v=0",
)


def chromium_binary() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.fail("chromium is not installed: run `bash .ci/setup` (it installs Debian's chromium package)")
    return found


def run_chromium(url: str, *extra: str) -> tuple[str, list[str]]:
    """Load ``url`` in a fresh headless Chromium; its stdout and the console lines it logged."""
    with tempfile.TemporaryDirectory(prefix="tracespec-chromium-") as profile:
        done = subprocess.run(
            [chromium_binary(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *extra, url],
            capture_output=True, text=True, timeout=120, env={**os.environ, "LANG": "C.UTF-8"},
        )
    assert done.returncode == 0, done.stderr[-2000:]
    console = [line for line in done.stderr.splitlines() if re.search(r":CONSOLE\(?\d*\)?\]|:CONSOLE:", line)]
    return done.stdout, console


@pytest.fixture(scope="session")
def open_page() -> Any:
    """``open_page(path, fragment="")`` -> :class:`Page`: the DOM after the scripts ran, and the console."""

    def load(path: Path, fragment: str = "") -> Page:
        dom, console = run_chromium(path.resolve().as_uri() + fragment, "--dump-dom")
        return Page(dom, console)

    return load
