"""Real PyTorch runs: each injected porting bug is found at the module that introduced it."""

from __future__ import annotations

from pathlib import Path

import pytest

import tracespec
from test_compare.torch_models import Variant, record_run


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return record_run(tmp_path_factory.mktemp("ref") / "trace")


def _units(verdict: tracespec.Verdict, stage: str) -> dict[str, dict]:
    found: dict[str, dict] = {}
    for node in verdict.nodes:
        if node["stage"] == stage and node["step"] == 0:
            found.setdefault(node["a"]["route"], node)
    return found


@pytest.mark.parametrize(
    ("variant", "stage", "culprit", "class_name", "inherited"),
    [
        (Variant(bug_block=0, ln_eps=1e-6), "forward", "blocks.0.ln_1", "LayerNorm", ["blocks.0.attn", "blocks.1", "head"]),
        (Variant(gelu_tanh=True), "forward", "blocks.1.mlp.act", "Activation", ["blocks.1.mlp.fc2", "blocks.2", "head"]),
        (Variant(attention_scale=0.5), "forward", "blocks.1.attn", "Attention", ["blocks.1.attn.o", "blocks.1.ln_2", "head"]),
        (Variant(half_round_trip=True), "forward", "blocks.1.mlp", "MLP", ["blocks.1.mlp.act", "blocks.1.mlp.fc2", "head"]),
        (Variant(train=True), "forward", "blocks.0.drop", "Dropout", ["blocks.1.ln_1", "ln_f", "head"]),
        (
            Variant(wrong_backward=True),
            "backward",
            "blocks.1.mlp.act",
            "Activation",
            ["blocks.1.mlp.fc1", "blocks.0.attn", "wte"],
        ),
        (
            Variant(weight_noise=1e-4),
            "forward",
            "blocks.1.mlp.fc1",
            "Projection",
            ["blocks.1.mlp.act", "blocks.1.mlp.fc2", "head"],
        ),
    ],
    ids=["layernorm-eps", "gelu-tanh", "attention-scale", "half-round-trip", "dropout-on", "wrong-backward", "weight-1e-4"],
)
def test_injected_bug_is_found_where_it_was_introduced(
    reference: Path, tmp_path: Path, variant: Variant, stage: str, culprit: str, class_name: str, inherited: list[str]
) -> None:
    verdict = tracespec.compare(reference, record_run(tmp_path / "buggy", variant))
    first = verdict.first_divergence
    assert verdict.status == "fail" and first is not None
    assert (first["stage"], first["kind"], first["a"]["route"], first["a"]["class_name"]) == (
        stage,
        "introduced",
        culprit,
        class_name,
    )
    units = _units(verdict, stage)
    for route in inherited:
        assert units[route]["divergence"] == "inherited", route
    # everything that ran before the culprit in that stage agrees, and only the culprit introduced it
    introduced = [n["a"]["route"] for n in verdict.nodes if n["divergence"] == "introduced" and n["stage"] == stage]
    assert introduced == [culprit]
    if stage == "backward":
        assert all(n["status"] != "diverged" for n in verdict.nodes if n["stage"] == "forward")


@pytest.mark.parametrize(
    ("variant", "detected"),
    [
        (Variant(weight_noise=1e-5), True),  # rel RMSE 8.9e-6 at fc1: 1.2x the float32 bound
        (Variant(weight_noise=3e-6), False),  # 2.9e-6: below rounding noise of a correct port
        (Variant(bug_block=0, ln_eps=1e-6), True),  # on embeddings of variance 4e-4: 1650x the bound
        (Variant(bug_block=1, ln_eps=1e-6), False),  # on activations of variance ~1: eps / 2var ~ 5e-7
    ],
    ids=["weight-1e-5", "weight-3e-6", "ln-eps-1e-6-block0", "ln-eps-1e-6-block1"],
)
def test_where_detection_of_small_bugs_stops(reference: Path, tmp_path: Path, variant: Variant, detected: bool) -> None:
    """The detection-limit table of docs/diff.md (Tolerances)."""
    verdict = tracespec.compare(reference, record_run(tmp_path / "small", variant))
    assert (verdict.status == "fail") is detected, verdict.first_divergence
    if detected:
        first = verdict.first_divergence
        assert first is not None and first["kind"] == "introduced"


def test_the_culprits_parents_contain_it(reference: Path, tmp_path: Path) -> None:
    verdict = tracespec.compare(reference, record_run(tmp_path / "buggy", Variant(gelu_tanh=True)))
    units = _units(verdict, "forward")
    assert units["blocks.1.mlp"]["divergence"] == "contains"
    assert units["blocks.1"]["divergence"] == "contains"
    assert units["blocks.0"]["status"] == "pass"


@pytest.mark.parametrize("variant", [Variant(), Variant(einsum=True)], ids=["same-model-twice", "einsum-vs-linear"])
def test_harmless_reruns_pass_at_default_tolerances(reference: Path, tmp_path: Path, variant: Variant) -> None:
    verdict = tracespec.compare(reference, record_run(tmp_path / "again", variant))
    assert verdict.status == "pass", verdict.first_divergence
    assert verdict.first_divergence is None
    assert verdict.summary["units"] > 40 and verdict.summary["diverged"] == 0


def test_same_model_twice_is_bitwise_identical(reference: Path, tmp_path: Path) -> None:
    verdict = tracespec.compare(reference, record_run(tmp_path / "again"), mode="bitwise")
    assert verdict.status == "pass"
    assert verdict.summary["pass_within_tolerance"] == 0


def test_a_tight_rtol_override_turns_the_einsum_refactor_into_a_failure(reference: Path, tmp_path: Path) -> None:
    refactor = record_run(tmp_path / "einsum", Variant(einsum=True))
    assert tracespec.compare(reference, refactor).status == "pass"
    strict = tracespec.compare(reference, refactor, mode="bitwise")
    assert strict.status == "fail"


@pytest.mark.parametrize("capture", ["stats", "hash"])
def test_traces_without_data_are_compared_with_what_they_kept(tmp_path: Path, capture: str) -> None:
    reference = record_run(tmp_path / "a", capture=capture)
    assert tracespec.compare(reference, record_run(tmp_path / "again", capture=capture)).status == "pass"
    verdict = tracespec.compare(reference, record_run(tmp_path / "b", Variant(bug_block=0, ln_eps=1e-6), capture=capture))
    first = verdict.first_divergence
    assert first is not None and (first["a"]["route"], first["kind"]) == ("blocks.0.ln_1", "introduced")
    assert first["metrics"]["kind"] == ("stats" if capture == "stats" else "hash")
