"""Long runs: real trainings recorded at ``stats`` for 300 steps, compared column-wise, and the
per-step series that says when the runs drifted apart (issue 22)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from test_compare.training_runs import NUDGED_LAYER, record_training
from tracespec.cli import cli
from tracespec.compare import compare_traces, validate_verdict
from tracespec.compare.columnar import ColumnarRank
from tracespec.testing.synthetic import SyntheticRecorder

STEPS = 300
NUDGE = 250


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("long")
    return {
        "a": record_training(folder / "a", steps=STEPS, nudge_step=None),
        "b": record_training(folder / "b", steps=STEPS, nudge_step=NUDGE),
    }


def test_the_first_divergence_and_the_series_name_the_nudged_step_and_module(runs: dict[str, Path]) -> None:
    verdict = compare_traces(runs["a"], runs["b"])
    validate_verdict(verdict.to_json())
    first = verdict.first_divergence
    assert first is not None
    assert (first["step"], first["stage"], first["a"]["route"], first["kind"]) == (
        NUDGE,
        "forward",
        str(NUDGED_LAYER),
        "introduced",
    )
    series = verdict.steps
    assert [p["step"] for p in series] == list(range(STEPS))
    assert all(p["diverged"] == 0 and p["first"] is None for p in series[:NUDGE])
    at = series[NUDGE]
    assert at["diverged"] > 0 and at["worst_ratio"] > 1
    assert (at["first"]["route"], at["first"]["stage"], at["first"]["kind"]) == (str(NUDGED_LAYER), "forward", "introduced")
    assert all(p["diverged"] > 0 for p in series[NUDGE:])  # Adam carries the nudge into every later step
    # the units listed are those of the first step and of the first divergent step
    assert verdict.selection["detail_steps"] == [0, NUDGE]
    assert {u["step"] for u in verdict.nodes} == {0, NUDGE}
    assert verdict.summary["units"] > len(verdict.nodes)  # the summary counts every step


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"mode": "strict"},
        {"tolerances": {"4": {"mode": "bitwise"}}, "stages": ["forward", "update"]},
        {"first_step_only": True},
    ],
    ids=["default", "strict", "bitwise-override", "first-step-only"],
)
def test_column_wise_and_record_by_record_give_the_same_verdict(
    runs: dict[str, Path], options: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    judged: list[int] = []
    column_wise = ColumnarRank.compare

    def counting(self: ColumnarRank, steps: list[int]) -> Any:
        found = column_wise(self, steps)
        judged.extend(found)
        return found

    monkeypatch.setattr(ColumnarRank, "compare", counting)
    steps = [(NUDGE - 15, NUDGE + 5)]  # 21 steps: beyond the steps whose units are all listed
    fast = compare_traces(runs["a"], runs["b"], steps=steps, **options)
    assert len(judged) >= 10  # most steps, diverged ones included, were judged column-wise
    slow = compare_traces(runs["a"], runs["b"], steps=steps, columnar=False, **options)
    assert fast.status == "fail" and fast.first_divergence is not None
    assert fast.dumps() == slow.dumps()


def test_first_step_only_stops_at_the_first_divergent_step(runs: dict[str, Path]) -> None:
    verdict = compare_traces(runs["a"], runs["b"], first_step_only=True)
    assert [p["step"] for p in verdict.steps] == list(range(NUDGE + 1))
    assert verdict.first_divergence is not None and verdict.first_divergence["step"] == NUDGE
    assert verdict.selection["first_step_only"] is True


def test_a_run_against_itself_passes_at_every_step(runs: dict[str, Path]) -> None:
    verdict = compare_traces(runs["a"], runs["a"], steps=[(0, 40)])
    assert verdict.passed and len(verdict.steps) == 41
    assert all(p["diverged"] == 0 and p["worst_ratio"] == 0 for p in verdict.steps)
    assert verdict.summary["diverged"] == verdict.summary["pass_within_tolerance"] == 0


def test_hash_only_runs_compare_column_wise(tmp_path: Path) -> None:
    a = record_training(tmp_path / "a", steps=30, nudge_step=None, capture="hash", blocks=3)
    b = record_training(tmp_path / "b", steps=30, nudge_step=20, capture="hash", blocks=3)
    fast = compare_traces(a, b)
    assert fast.dumps() == compare_traces(a, b, columnar=False).dumps()
    assert fast.first_divergence is not None and fast.first_divergence["step"] == 20
    assert next(p["step"] for p in fast.steps if p["diverged"]) == 20
    assert fast.steps[20]["worst_ratio"] is None  # content hashes differ: no ratio, infinitely off


def test_cli_step_ranges_and_the_sparkline(runs: dict[str, Path]) -> None:
    a, b = str(runs["a"]), str(runs["b"])
    done = CliRunner().invoke(cli, ["diff", a, b, "--step", f"{NUDGE - 10}:", "--first-step-only", "--json", "-"])
    assert done.exit_code == 1, done.output
    verdict = json.loads(done.stdout)
    assert [p["step"] for p in verdict["steps"]] == list(range(NUDGE - 10, NUDGE + 1))
    report = CliRunner().invoke(cli, ["diff", a, b, "--step", f":{NUDGE + 3}", "--step", "299"])
    assert report.exit_code == 1
    assert f"Over {NUDGE + 5} steps (0 to 299" in report.output
    assert (
        f"first divergent step {NUDGE}:" in report.output and f"{NUDGED_LAYER} (Linear) introduced it in forward" in report.output
    )
    same = CliRunner().invoke(cli, ["diff", a, a, "--step", "0:20"])
    assert same.exit_code == 0 and "Over 21 steps (0 to 20" in same.output and "no step diverges (worst ratio 0)" in same.output
    for bad, message in (
        ("5:2", "the first step is after the last"),
        ("x", "is not a step"),
        (f"{STEPS}:", "holds no step of both traces (A has 0-299"),
    ):
        refused = CliRunner().invoke(cli, ["diff", a, b, "--step", bad])
        assert refused.exit_code == 2 and message in refused.output, refused.output


def _two_ranks(path: Path, nudge_step: int | None) -> Path:
    """Two ranks of a 3-layer numpy network over 14 steps at ``stats``, each step's root call with a
    non-tensor output too; from ``nudge_step`` on, rank 1's ``fc1`` computes with a weight 1e-3 off
    (its recorded weight unchanged) and its non-tensor output says so."""
    weights = [np.random.default_rng(i).standard_normal((8, 8)).astype(np.float32) / 3 for i in range(3)]
    for rank in (0, 1):
        with SyntheticRecorder(path, level="stats", rank=rank, world_size=2) as rec:
            net = rec.module("", "Net")
            layers = [rec.module(f"fc{i}", "Linear", parent=net, params={"weight": w}) for i, w in enumerate(weights)]
            for step in range(14):
                wrong = nudge_step is not None and rank == 1 and step >= nudge_step
                h = np.random.default_rng((rank, step)).standard_normal((4, 8)).astype(np.float32)
                with rec.forward(net, h) as outer:
                    for i, layer in enumerate(layers):
                        with rec.forward(layer, h) as inner:
                            h = inner.output(np.tanh(h @ (weights[i] * (1 + 1e-3 * (wrong and i == 1))).T))
                    outer.output(h)
                rec.writer.add_value(
                    step=step, stage="forward", node=net, role="output", slot="1", call=0, value="wrong" if wrong else "ok"
                )
                rec.end_step()
    return path


def test_two_ranks_column_wise_name_the_rank_and_step(tmp_path: Path) -> None:
    a, b = _two_ranks(tmp_path / "a", None), _two_ranks(tmp_path / "b", 9)
    fast = compare_traces(a, b)
    assert fast.dumps() == compare_traces(a, b, columnar=False).dumps()
    first = fast.first_divergence
    assert first is not None and (first["step"], first["rank"], first["a"]["route"], first["kind"]) == (9, 1, "fc1", "introduced")
    assert [p["step"] for p in fast.steps if p["diverged"]] == list(range(9, 14))
    assert fast.steps[9]["first"] == {
        "rank": 1,
        "stage": "forward",
        "route": "fc1",
        "class_name": "Linear",
        "call": 0,
        "kind": "introduced",
    }
    assert len({p["records"] for p in fast.steps}) == 1  # every step compares the same pairs, both ranks'
