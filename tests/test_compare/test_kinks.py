"""Kink flips of piecewise operations: a correct PyTorch -> Paddle CNN port passes and says where
its ReLU and max-pool flipped; a wrong ReLU backward and a changed pooling still fail, with numbers."""

from __future__ import annotations

from pathlib import Path

import pytest

import tracespec
from test_compare.cnn_models import record_paddle, record_torch
from tracespec.compare import validate_verdict
from tracespec.compare.kinks import INHERITED_GAIN
from tracespec.report import render_text


@pytest.fixture(scope="module")
def torch_trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return record_torch(tmp_path_factory.mktemp("torch") / "trace")


@pytest.fixture(scope="module")
def port_verdict(torch_trace: Path, tmp_path_factory: pytest.TempPathFactory) -> tracespec.Verdict:
    return tracespec.compare(torch_trace, record_paddle(tmp_path_factory.mktemp("paddle") / "trace"))


def _records(verdict: tracespec.Verdict, route: str, stage: str = "backward") -> dict[tuple[str, str], dict]:  # type: ignore[type-arg]
    return {
        (r["role"], r["slot"]): r for n in verdict.nodes if n["stage"] == stage and n["a"]["route"] == route for r in n["records"]
    }


def test_the_correct_port_passes_and_reports_its_kink_flips(port_verdict: tracespec.Verdict) -> None:
    assert port_verdict.status == "pass", port_verdict.first_divergence
    relu = _records(port_verdict, "relu1")[("grad_input", "0")]
    assert relu["status"] == "pass_within_tolerance"
    kinks = relu["noise"]["kinks"]
    assert kinks["family"] == "relu" and kinks["route"] == "relu1" and kinks["count"] > 0
    assert relu["metrics"]["mismatched"] >= kinks["count"]  # the numbers stay: the flips are not hidden
    pool = _records(port_verdict, "pool")[("grad_input", "0")]
    assert pool["noise"]["kinks"]["family"] == "maxpool" and pool["noise"]["kinks"]["count"] > 0
    assert [b["route"] for b in port_verdict.benign if b["kind"] == "kinks"] == ["pool", "relu1"]
    report = render_text(port_verdict)
    assert f"backward relu1 (ReLU) grad_input[0]: {kinks['count']} kink flip(s) where |x - kink| <=" in report


def test_what_the_flips_change_upstream_is_inherited_within_a_bound(port_verdict: tracespec.Verdict) -> None:
    conv = _records(port_verdict, "conv1")
    grad = conv[("grad_input", "0")]
    inherited = grad["noise"]["inherited"]
    assert grad["metrics"]["rel_rmse"] > 1e-3  # far beyond noise: without the explanation it would fail
    assert inherited["bound"] == pytest.approx(INHERITED_GAIN * inherited["consumed_rel_rmse"])
    assert grad["metrics"]["rel_rmse"] <= inherited["bound"]
    assert conv[("parameter_grad", "weight")]["status"] == "pass_within_tolerance"
    # the tensor is shared with the root's input gradient: judged once, explained once
    root = _records(port_verdict, "")[("grad_input", "0")]
    assert root["noise"] == grad["noise"] and root["status"] == grad["status"]


def test_a_wrong_relu_backward_still_fails_at_the_relu(torch_trace: Path, tmp_path: Path) -> None:
    verdict = tracespec.compare(torch_trace, record_paddle(tmp_path / "wrong", wrong_relu_backward=True))
    first = verdict.first_divergence
    assert first is not None
    assert (first["stage"], first["kind"], first["a"]["route"], first["record"]["role"]) == (
        "backward",
        "introduced",
        "relu1",
        "grad_input",
    )
    assert first["metrics"]["mismatched"] > 0


def test_a_changed_pooling_shows_both_shapes(torch_trace: Path, tmp_path: Path) -> None:
    verdict = tracespec.compare(record_torch(tmp_path / "ceil", ceil_mode=True), record_paddle(tmp_path / "paddle"))
    first = verdict.first_divergence
    assert first is not None and (first["stage"], first["a"]["route"], first["kind"]) == ("forward", "pool", "introduced")
    assert first["metrics"] is None
    assert first["mismatch"] == {
        "kind": "shape",
        "shape": {"a": [4, 8, 8, 8], "b": [4, 8, 7, 7]},
        "dtype": {"a": "float32", "b": "float32"},
    }
    assert "[4, 8, 8, 8] float32 in A, [4, 8, 7, 7] float32 in B" in first["evidence"]
    assert "output[0]: shape [4, 8, 8, 8] float32 in A, [4, 8, 7, 7] float32 in B" in render_text(verdict)
    validate_verdict(verdict.to_json())


def test_without_forward_data_kink_flips_are_said_unchecked_and_fail(tmp_path: Path) -> None:
    verdict = tracespec.compare(record_torch(tmp_path / "a", capture="stats"), record_paddle(tmp_path / "b", capture="stats"))
    first = verdict.first_divergence
    assert first is not None and (first["stage"], first["a"]["route"]) == ("backward", "relu1")
    assert "kink flips not checked: no forward input data" in first["evidence"]
    assert first["metrics"]["kind"] == "stats" and verdict.benign == []
