"""--baseline: a second recording of A's side measures the noise floor (thread-count noise here)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

import tracespec
from test_compare.threads_model import record_with_threads
from tracespec.cli import cli
from tracespec.compare import validate_verdict
from tracespec.compare.baseline import BASELINE_FACTOR


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("threads")
    return {
        "a": record_with_threads(root / "a", 1),
        "a2": record_with_threads(root / "a2", 2),
        "b": record_with_threads(root / "b", 3),
    }


def _centre_output(verdict: tracespec.Verdict) -> dict:  # type: ignore[type-arg]
    return next(
        r
        for n in verdict.nodes
        if n["stage"] == "forward" and n["a"]["route"] == "centre"
        for r in n["records"]
        if r["role"] == "output"
    )


def test_thread_count_noise_alone_fails_the_default_tolerance(runs: dict[str, Path]) -> None:
    verdict = tracespec.compare(runs["a"], runs["b"])
    first = verdict.first_divergence
    assert first is not None and (first["a"]["route"], first["kind"]) == ("centre", "introduced")
    assert first["metrics"]["rel_rmse"] > verdict.tolerances["by_dtype"]["float32"]["rel_rmse"]


def test_the_baseline_measures_that_noise_and_passes(runs: dict[str, Path]) -> None:
    verdict = tracespec.compare(runs["a"], runs["b"], baseline=runs["a2"])
    assert verdict.status == "pass", verdict.first_divergence
    validate_verdict(verdict.to_json())
    assert verdict.tolerances["baseline"]["factor"] == BASELINE_FACTOR
    assert verdict.tolerances["baseline"]["records"] > 10
    record = _centre_output(verdict)
    measured = record["noise"]["baseline"]
    assert measured["rel_rmse"] > 0 and record["metrics"]["rel_rmse"] <= BASELINE_FACTOR * measured["rel_rmse"]


def test_a_baseline_without_noise_widens_nothing(runs: dict[str, Path]) -> None:
    verdict = tracespec.compare(runs["a"], runs["b"], baseline=runs["a"])
    assert verdict.status == "fail"
    assert _centre_output(verdict)["noise"]["baseline"] == {"rel_rmse": 0.0, "max_abs": 0.0}


def test_a_real_bug_still_fails_with_the_baseline(runs: dict[str, Path], tmp_path: Path) -> None:
    buggy = record_with_threads(tmp_path / "bug", 3, weight_scale=1 + 1e-3)
    verdict = tracespec.compare(runs["a"], buggy, baseline=runs["a2"])
    first = verdict.first_divergence
    assert first is not None and (first["stage"], first["a"]["route"], first["kind"]) == ("forward", "fc2", "introduced")


def test_the_cli_takes_a_baseline_and_refuses_a_bad_one_in_one_line(runs: dict[str, Path], tmp_path: Path) -> None:
    ok = CliRunner().invoke(cli, ["diff", str(runs["a"]), str(runs["b"]), "--baseline", str(runs["a2"]), "--no-progress"])
    assert ok.exit_code == 0, ok.output
    assert "Baseline " in ok.output and "measured noise" in ok.output
    (tmp_path / "junk").mkdir()
    bad = CliRunner().invoke(cli, ["diff", str(runs["a"]), str(runs["b"]), "--baseline", str(tmp_path / "junk"), "--no-progress"])
    assert bad.exit_code == 3
    assert bad.output.count("\n") == 1 and "baseline" in bad.output and "Traceback" not in bad.output
