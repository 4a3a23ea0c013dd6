"""Diagnosis on synthetic traces: introduced, inherited, contains; backward; error growth."""

from __future__ import annotations

from pathlib import Path

import pytest

import tracespec
from test_compare.synthetic_nets import Knobs, record_linear_chain, record_tiny_net


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return record_tiny_net(tmp_path_factory.mktemp("ref") / "a")


def _by_route(verdict: tracespec.Verdict, stage: str = "forward") -> dict[str, dict]:
    return {n["a"]["route"]: n for n in verdict.nodes if n["stage"] == stage}


def test_a_trace_compared_with_itself_passes_bitwise(reference: Path) -> None:
    verdict = tracespec.compare(reference, reference)
    assert verdict.status == "pass" and verdict.first_divergence is None
    assert verdict.summary["pass"] == verdict.summary["units"] and verdict.summary["diverged"] == 0
    assert "bitwise identical" in verdict.hint


def test_a_parent_whose_children_pass_but_which_fails_introduced_it(reference: Path, tmp_path: Path) -> None:
    # the block scales the LayerNorm output in its own code, between its children
    verdict = tracespec.compare(reference, record_tiny_net(tmp_path / "b", Knobs(inside_parent_scale=1.5)))
    units = _by_route(verdict)
    assert units["blocks.1.ln"]["status"] == "pass"
    assert units["blocks.1.fc1"]["divergence"] == "inherited"
    assert units["blocks.1"]["divergence"] == "introduced"
    first = verdict.first_divergence
    assert first is not None and (first["a"]["route"], first["kind"]) == ("blocks.1", "introduced")


def test_different_inputs_make_everything_inherited(reference: Path, tmp_path: Path) -> None:
    verdict = tracespec.compare(reference, record_tiny_net(tmp_path / "b", Knobs(input_noise=0.1)))
    first = verdict.first_divergence
    assert first is not None and first["kind"] == "inherited" and first["a"]["route"] == "embed"
    assert verdict.summary["introduced"] == 0
    assert "inputs" in verdict.hint


def test_wrong_backward_is_introduced_in_the_backward_stage(tmp_path: Path) -> None:
    verdict = tracespec.compare(record_linear_chain(tmp_path / "a"), record_linear_chain(tmp_path / "b", wrong_backward_at=2))
    first = verdict.first_divergence
    assert first is not None and (first["stage"], first["kind"], first["a"]["route"]) == ("backward", "introduced", "l2")
    backward = _by_route(verdict, "backward")
    assert backward["l3"]["status"] == "pass"  # runs before l2 in backward
    assert backward["l1"]["divergence"] == "inherited" and backward["l0"]["divergence"] == "inherited"
    assert all(n["status"] == "pass" for n in verdict.nodes if n["stage"] == "forward")


def test_error_growth_follows_execution_order(reference: Path, tmp_path: Path) -> None:
    verdict = tracespec.compare(reference, record_tiny_net(tmp_path / "b", Knobs(bug_ln_eps=1e-2, bug_block=0)))
    curve = [p for p in verdict.error_growth if p["stage"] == "forward"]
    routes = [p["route"] for p in curve]
    assert routes.index("embed") < routes.index("blocks.0.ln") < routes.index("blocks.0") < routes.index("head")
    errors = {p["route"]: p["rel_rmse"] for p in curve}
    assert errors["embed"] == 0 and errors["blocks.0.ln"] > 1e-4 and errors["head"] > 0


def test_selection_by_stage_step_and_route(tmp_path: Path) -> None:
    a = record_linear_chain(tmp_path / "a")
    b = record_linear_chain(tmp_path / "b", wrong_backward_at=2)
    assert tracespec.compare(a, b, stages=["forward"]).status == "pass"
    assert tracespec.compare(a, b, routes=["l3"]).status == "pass"  # runs before the bug in backward
    assert tracespec.compare(a, b, exclude=["l2", "l1", "l0", ""]).status == "pass"
    only = tracespec.compare(a, b, routes=["l1"])
    assert {n["a"]["route"] for n in only.nodes} == {"l1"} and only.status == "fail"
    with pytest.raises(tracespec.TracespecError, match="step"):
        tracespec.compare(a, b, steps=[5])


def test_several_steps_report_the_earliest(reference: Path, tmp_path: Path) -> None:
    a = record_tiny_net(tmp_path / "a", steps=2)
    b = record_tiny_net(tmp_path / "b", Knobs(bug_gelu="tanh"), steps=2)
    verdict = tracespec.compare(a, b)
    assert verdict.first_divergence is not None and verdict.first_divergence["step"] == 0
    assert tracespec.compare(a, b, steps=[1]).first_divergence["step"] == 1  # type: ignore[index]


def _two_ranks(path: Path, bug_on_rank: int | None) -> Path:
    import numpy as np

    from tracespec.testing.synthetic import SyntheticRecorder

    for rank in (0, 1):
        with SyntheticRecorder(path, rank=rank, world_size=2) as rec:
            net = rec.module("", "Net")
            scale = rec.module("scale", "Scale", net)
            x = np.arange(6, dtype=np.float32) + rank
            with rec.forward(net, x) as top:
                with rec.forward(scale, x) as c:
                    y = c.output(x * np.float32(3 if rank == bug_on_rank else 2))
                top.output(y)
            rec.end_step()
    return path


def test_ranks_are_compared_pairwise(tmp_path: Path) -> None:
    verdict = tracespec.compare(_two_ranks(tmp_path / "a", None), _two_ranks(tmp_path / "b", 1))
    first = verdict.first_divergence
    assert first is not None and (first["rank"], first["a"]["route"]) == (1, "scale")
    assert set(verdict.coverage["ranks"]) == {"0", "1"}
    assert tracespec.compare(tmp_path / "a", tmp_path / "b", ranks=[0]).status == "pass"


def test_a_wrong_optimizer_update_is_found_in_the_update_stage(tmp_path: Path) -> None:
    verdict = tracespec.compare(record_linear_chain(tmp_path / "a"), record_linear_chain(tmp_path / "b", wrong_update_at=1))
    first = verdict.first_divergence
    assert first is not None and (first["stage"], first["kind"], first["a"]["route"]) == ("update", "introduced", "l1")
    assert "optimizer" in verdict.hint
