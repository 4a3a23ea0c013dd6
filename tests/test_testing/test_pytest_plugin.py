"""The pytest plugin, run by pytest's own ``pytester``: golden tests that pass, fail with the
culprit in the message, update, write reports, and compare a golden of one framework with code
of the other; ``assert_matches`` on its own."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import tracespec
from tracespec.testing import TraceMismatch, assert_matches

MODEL = """
import os
import numpy as np
import torch
from torch import nn

def make_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    if os.environ.get("BUG"):
        with torch.no_grad():
            model[2].weight.mul_(1.01)  # the regression: a weight loaded wrong
    return model

def batch():
    return torch.from_numpy(np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4))

def test_model_matches_golden(tracespec_golden):
    model = make_model()
    with tracespec_golden.record(model):
        model(batch()).square().sum().backward()
"""


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makepyfile(test_model=MODEL)
    pytester.makeini("[pytest]\ntracespec_golden_dir = goldens\n")
    return pytester


def test_a_first_run_records_the_golden_and_asks_to_commit_it(project: pytest.Pytester) -> None:
    result = project.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*no golden trace at *goldens/test_model/test_model_matches_golden: recorded it now*"])
    golden = project.path / "goldens" / "test_model" / "test_model_matches_golden"
    assert tracespec.load_trace(golden).complete
    assert tracespec.load_trace(golden).manifest.capture["level"] == "stats"  # small by default
    project.runpytest_inprocess("-p", "no:cacheprovider").assert_outcomes(passed=1)


def test_a_regression_fails_naming_the_culprit(project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    project.runpytest_inprocess("-p", "no:cacheprovider")  # records the golden
    monkeypatch.setenv("BUG", "1")
    reports = project.path / "reports"
    result = project.runpytest_inprocess("-p", "no:cacheprovider", f"--tracespec-report={reports}")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*TraceMismatch: FAIL: first divergence in forward, step 0, rank 0: 2 (Linear) introduced it*parameter?weight? differ*",
            "*HTML report: *reports/test_model.test_model_matches_golden.html",
        ]
    )
    assert "2 (Linear)" in (reports / "test_model.test_model_matches_golden.html").read_text()


def test_update_records_the_goldens_again(project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    project.runpytest_inprocess("-p", "no:cacheprovider")
    monkeypatch.setenv("BUG", "1")
    project.runpytest_inprocess("-p", "no:cacheprovider", "--tracespec-update").assert_outcomes(passed=1)
    project.runpytest_inprocess("-p", "no:cacheprovider").assert_outcomes(passed=1)  # the new behaviour is the golden
    monkeypatch.delenv("BUG")
    project.runpytest_inprocess("-p", "no:cacheprovider").assert_outcomes(failed=1)


def test_a_torch_golden_checks_a_paddle_port(project: pytest.Pytester) -> None:
    project.runpytest_inprocess("-p", "no:cacheprovider")  # the torch golden
    port = (
        MODEL.split("def test_model_matches_golden")[0]
        + """
import paddle

def paddle_port(scale=1.0):
    torch_model = make_model()
    layers = [paddle.nn.Linear(4, 8), paddle.nn.Tanh(), paddle.nn.Linear(8, 2)]
    for layer, source in zip(layers[::2], torch_model[::2]):
        layer.weight.set_value(source.weight.detach().numpy().T)
        layer.bias.set_value(source.bias.detach().numpy())
    layers[2].bias.set_value(layers[2].bias.numpy() * scale)
    return paddle.nn.Sequential(*layers)

def test_model_matches_golden(tracespec_golden):
    model = paddle_port()
    with tracespec_golden.record(model):
        model(paddle.to_tensor(batch().numpy())).square().sum().backward()

def test_buggy_port(tracespec_golden):
    model = paddle_port(scale=1.5)
    with tracespec_golden.record(model, golden="test_model/test_model_matches_golden"):
        model(paddle.to_tensor(batch().numpy())).square().sum().backward()
"""
    )
    project.makepyfile(test_model=port)
    result = project.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        ["*test_buggy_port*", "*FAIL: first divergence in forward, step 0, rank 0: 2 (Linear) introduced it*"]
    )


def _record(path: Path, scale: float = 1.0) -> Path:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 1))
    with torch.no_grad():
        model[0].weight.mul_(scale)
    with tracespec.record(model, path) as rec:
        model(torch.ones(2, 3)).sum().backward()
        rec.step()
    return path


def test_assert_matches_returns_the_verdict_or_raises_with_the_report(tmp_path: Path) -> None:
    reference = _record(tmp_path / "ref")
    assert assert_matches(_record(tmp_path / "same"), reference).passed
    with pytest.raises(TraceMismatch, match=r"(?s)0 \(Linear\) introduced it.*HTML report: .*fail.html") as caught:
        assert_matches(_record(tmp_path / "bug", scale=1.1), reference, report=tmp_path / "fail.html")
    assert caught.value.verdict.first_divergence["a"]["route"] == "0"
    assert caught.value.report == tmp_path / "fail.html" and caught.value.report.exists()


def test_assert_matches_refuses_an_incomplete_candidate(tmp_path: Path) -> None:
    reference = _record(tmp_path / "ref")
    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 1))
    with pytest.raises(RuntimeError), tracespec.record(model, tmp_path / "cut"):
        model(torch.ones(2, 3))
        raise RuntimeError("the run died")
    with pytest.raises(TraceMismatch, match="candidate trace .* is INCOMPLETE"):
        assert_matches(tmp_path / "cut", reference)
