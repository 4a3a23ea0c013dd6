"""Traces written by the 1.0 writers stay readable by every later 1.x reader (spec section 3):
deep validation, a spec-only reader, and a diff across the two frameworks."""

from __future__ import annotations

from pathlib import Path

import minimal_reader
import pytest

import tracespec

GOLDEN = Path(__file__).resolve().parents[2] / "spec" / "v1" / "golden"
TRACES = sorted(p for p in GOLDEN.iterdir() if (p / "manifest.json").exists())


def test_the_golden_traces_are_there() -> None:
    assert [p.name for p in TRACES] == ["paddle_mlp", "torch_mlp", "torch_mlp_stats"]


@pytest.mark.parametrize("path", TRACES, ids=[p.name for p in TRACES])
def test_a_1_0_trace_is_read_by_this_reader(path: Path) -> None:
    report = tracespec.validate_trace(path, deep=True)
    assert report.complete and report.trace.manifest.format_version == "1.0"
    assert minimal_reader.check(path) == sum(1 for r in report.trace.tensors().to_pylist() if r["array"] is not None)
    # properties added by 1.1 are absent, which means unknown (section 3 item 9)
    assert all(part.manifest.ending is None for part in report.trace.parts.values())


def test_1_0_traces_of_two_frameworks_still_diff_clean() -> None:
    verdict = tracespec.compare(GOLDEN / "torch_mlp", GOLDEN / "paddle_mlp")
    assert verdict.passed, verdict.describe()
    assert verdict.coverage["ranks"]["0"]["calls"]["fraction_a"] == 1.0
    assert {unit["stage"] for unit in verdict.nodes} == {"forward", "backward", "update"}
