"""Finding where NaN and Inf first appear: ``first_nonfinite``, ``tracespec show --first-nonfinite``
and ``record(..., stop_on_nonfinite=True)``, on training runs that break at step 7."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

import tracespec
from tracespec import first_nonfinite, load_trace
from tracespec.cli import cli
from tracespec.errors import NonFiniteError, UsageError

STEPS = 10
BREAKS_AT = 7


class Log(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(x)


class Sqrt(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(x)


class Model(nn.Module):
    """``head(tanh(embed(x)) * f(remaining))``: ``remaining`` reaches 0 at step 7, where ``log``
    is -inf in the forward and ``sqrt``'s gradient is inf in the backward."""

    def __init__(self, f: nn.Module) -> None:
        super().__init__()
        self.embed = nn.Linear(4, 8)
        self.f = f
        self.head = nn.Linear(8, 1)

    def forward(self, x: torch.Tensor, remaining: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.embed(x)) * self.f(remaining))  # type: ignore[no-any-return]


def train(path: Path, f: nn.Module, **options: Any) -> int:
    """Train with an optimizer until the end or an error; returns the steps begun."""
    torch.manual_seed(0)
    model = Model(f)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    begun = 0
    with tracespec.record(model, path, optimizer=optimizer, **options) as rec:
        for step in range(STEPS):
            begun += 1
            x = torch.from_numpy(np.random.default_rng(step).standard_normal((3, 4)).astype(np.float32))
            remaining = torch.full((3, 1), float(BREAKS_AT - step)).clamp(min=0).requires_grad_()
            model(x, remaining).pow(2).mean().backward()
            optimizer.step()
            optimizer.zero_grad()
            rec.step()
    return begun


@pytest.mark.parametrize("capture", ["full", "stats"])
def test_first_nonfinite_names_the_log_at_step_7(tmp_path: Path, capture: str) -> None:
    assert train(tmp_path / "t", Log(), capture=capture) == STEPS
    trace = load_trace(tmp_path / "t")
    origin = first_nonfinite(trace)
    assert origin is not None
    assert (origin.step, origin.stage, origin.route, origin.class_name, origin.call) == (BREAKS_AT, "forward", "f", "Log", 0)
    assert [(r["role"], r["slot"], r["nan_count"], r["inf_count"]) for r in origin.records] == [("output", "0", 0, 3)]
    # head and the root hold non-finite outputs at step 7 too, and end later: they inherited them.
    routes = {n["node"]: n["route"] for n in trace.nodes().to_pylist()}
    nonfinite_outputs = {
        routes[r["node"]]
        for r in trace.tensors().to_pylist()
        if r["step"] == BREAKS_AT and r["role"] == "output" and (r["nan_count"] or r["inf_count"])
    }
    assert nonfinite_outputs == {"f", "head", ""}

    result = CliRunner().invoke(cli, ["show", str(tmp_path / "t"), "--first-nonfinite"], catch_exceptions=False)
    assert result.exit_code == 0
    assert result.stdout.startswith("first non-finite value: step 7, forward, f (Log, call 0)")
    result = CliRunner().invoke(cli, ["show", str(tmp_path / "t"), "--first-nonfinite", "--json"], catch_exceptions=False)
    assert json.loads(result.stdout)["first_nonfinite"] == origin.to_json()


def test_first_nonfinite_names_a_backward_culprit(tmp_path: Path) -> None:
    train(tmp_path / "t", Sqrt(), capture="stats")
    origin = first_nonfinite(load_trace(tmp_path / "t"))
    assert origin is not None
    # sqrt(0) = 0 is finite; its gradient 1 / (2 sqrt(0)) is not.
    assert (origin.step, origin.stage, origin.route) == (BREAKS_AT, "backward", "f")
    assert [r["role"] for r in origin.records] == ["grad_input"]


def test_a_finite_run_has_no_origin(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Model(nn.Identity())
    with tracespec.record(model, tmp_path / "t") as rec:
        model(torch.ones(2, 4), torch.ones(2, 1)).sum().backward()
        rec.step()
    assert first_nonfinite(load_trace(tmp_path / "t")) is None
    result = CliRunner().invoke(cli, ["show", str(tmp_path / "t"), "--first-nonfinite"], catch_exceptions=False)
    assert result.exit_code == 0 and result.stdout.startswith("no recorded call of rank 0 produced NaN or Inf")


@pytest.mark.parametrize(("f", "stage"), [(Log(), "forward"), (Sqrt(), "backward")])
def test_stop_on_nonfinite_stops_at_step_7_after_publishing(tmp_path: Path, f: nn.Module, stage: str) -> None:
    begun = []
    with pytest.raises(NonFiniteError, match=rf"step 7, {stage} of 'f' \({type(f).__name__}, call 0\)"):
        begun.append(train(tmp_path / "t", f, capture="stats", stop_on_nonfinite=True))
    trace = load_trace(tmp_path / "t")
    assert not begun and trace.steps == list(range(BREAKS_AT + 1))
    assert trace.partial_steps == [BREAKS_AT]
    ending = trace.parts[0].manifest.ending
    assert ending is not None and ending.how == "exception" and ending.step == BREAKS_AT
    assert ending.detail is not None and ending.detail.startswith("NonFiniteError: ")
    origin = first_nonfinite(trace)
    assert origin is not None and (origin.step, origin.stage, origin.route) == (BREAKS_AT, stage, "f")


def test_stop_on_nonfinite_needs_statistics(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="stop_on_nonfinite=True needs statistics"):
        tracespec.record(nn.Linear(2, 2), tmp_path / "t", capture="hash", stop_on_nonfinite=True)
