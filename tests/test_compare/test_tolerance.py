"""Dtype-aware tolerances, user overrides, per-route overrides and modes."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

import tracespec
from test_compare.synthetic_nets import Knobs, record_tiny_net
from tracespec.compare.tolerance import DEFAULT_TOLERANCES, ELEMENT_SLACK, TolerancePolicy, coarser_dtype
from tracespec.errors import UsageError
from tracespec.testing.synthetic import SyntheticRecorder


def test_lower_precision_is_allowed_more() -> None:
    order = ["float64", "float32", "float16", "bfloat16", "float8_e4m3fn", "float8_e5m2"]
    rtols = [DEFAULT_TOLERANCES[d].rtol for d in order]
    assert rtols == sorted(rtols)
    bounds = [DEFAULT_TOLERANCES[d].rel_rmse for d in order]
    assert bounds == sorted(bounds) and bounds[-1] <= 0.25
    # float32's norm-wise bound stays far below one float16 rounding (rel RMSE ~ 2^-11 / sqrt(3))
    assert DEFAULT_TOLERANCES["float32"].rel_rmse < 2.0**-11 / math.sqrt(3) / 30


def _one_output(path: Path, output: np.ndarray) -> Path:
    with SyntheticRecorder(path) as rec:
        node = rec.module("", "Op")
        with rec.forward(node, np.zeros(1, np.float32)) as call:
            call.output(output)
        rec.end_step()
    return path


def _output_record(reference: Path, other: Path) -> dict:  # type: ignore[type-arg]
    verdict = tracespec.compare(reference, other)
    return next(r for r in verdict.nodes[0]["records"] if r["role"] == "output")


def test_the_default_judges_the_norm_and_only_gross_elements(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    a = rng.standard_normal(1 << 20).astype(np.float32)  # RMS 1
    reference = _one_output(tmp_path / "a", a)
    noise = (a + rng.standard_normal(a.size).astype(np.float32) * np.float32(1e-7)).astype(np.float32)
    outlier = noise.copy()
    outlier[7] += np.float32(5e-5)  # 5x the strict bound on one element of a million: noise
    noisy = _one_output(tmp_path / "noisy", outlier)
    assert tracespec.compare(reference, noisy, mode="strict").status == "fail"
    verdict = tracespec.compare(reference, noisy)
    assert verdict.status == "pass" and verdict.tolerances["mode"] == "norm"
    # one element off by 5e-3 of the scale: the norm-wise error stays at noise level (5e-3 / 1024),
    # but the element is ~450x beyond the strict bound, beyond the slack
    gross = noise.copy()
    gross[7] += np.float32(5e-3)
    record = _output_record(reference, _one_output(tmp_path / "gross", gross))
    assert record["metrics"]["rel_rmse"] < DEFAULT_TOLERANCES["float32"].rel_rmse
    assert record["metrics"]["tolerance_ratio"] > ELEMENT_SLACK and record["status"] == "diverged"
    # the same everywhere: the norm-wise error fails even where no element is far off
    shifted = (a * np.float32(1 + 3e-5)).astype(np.float32)
    record = _output_record(reference, _one_output(tmp_path / "shift", shifted))
    assert record["metrics"]["tolerance_ratio"] < ELEMENT_SLACK and record["status"] == "diverged"


def test_an_elementwise_tolerance_without_a_mode_judges_elementwise() -> None:
    assert TolerancePolicy.build().mode_for("x") == "norm"
    assert TolerancePolicy.build(rtol=1e-3).mode_for("x") == "strict"
    assert TolerancePolicy.build(rtol=1e-3, rel_rmse=1e-3).mode_for("x") == "norm"
    assert TolerancePolicy.build(mode="norm", atol=1e-3).mode_for("x") == "norm"
    routed = TolerancePolicy.build(overrides={"head": {"atol": 1e-3}, "body": {"rel_rmse": 1e-3}})
    assert (routed.mode_for("head"), routed.mode_for("body"), routed.mode_for("x")) == ("strict", "norm", "norm")
    assert routed.tolerance_for("body", "float32", "bfloat16").rel_rmse == 1e-3


@pytest.mark.parametrize(
    ("a", "b", "coarser"),
    [
        ("float32", "bfloat16", "bfloat16"),
        ("bfloat16", "float32", "bfloat16"),
        ("float16", "bfloat16", "bfloat16"),
        ("float64", "float32", "float32"),
        ("int64", "float32", "float32"),
        ("float32", "float32", "float32"),
    ],
)
def test_the_coarser_dtype_decides(a: str, b: str, coarser: str) -> None:
    assert coarser_dtype(a, b) == coarser


def test_user_atol_is_absolute_and_overrides_win_by_route() -> None:
    policy = TolerancePolicy.build(atol=1e-3, overrides={"blocks.*": {"rtol": 0.5}, "blocks.1.*": {"mode": "mean"}})
    assert policy.tolerance_for("head", "float32", "float32").atol_for(100.0) == 1e-3
    assert policy.tolerance_for("blocks.0.fc1", "float32", "float32").rtol == 0.5
    assert policy.mode_for("blocks.1.fc1") == "mean" and policy.mode_for("blocks.0.fc1") == "strict"
    assert DEFAULT_TOLERANCES["float32"].atol_for(100.0) == pytest.approx(1e-3)


@pytest.mark.parametrize("bad", [{"mode": "loose"}, {"atol": -1.0}, {"overrides": {"x": {"tol": 1}}}])
def test_bad_tolerance_options_are_usage_errors(bad: dict) -> None:  # type: ignore[type-arg]
    with pytest.raises(UsageError):
        TolerancePolicy.build(**bad)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return record_tiny_net(tmp_path_factory.mktemp("ref") / "a")


def test_einsum_refactor_passes_and_a_tiny_weight_change_does_not(reference: Path, tmp_path: Path) -> None:
    assert tracespec.compare(reference, record_tiny_net(tmp_path / "einsum", Knobs(einsum=True))).status == "pass"
    changed = tracespec.compare(reference, record_tiny_net(tmp_path / "w", Knobs(weight_noise=1e-4)))
    assert changed.status == "fail"
    first = changed.first_divergence
    assert first is not None and first["a"]["route"] == "blocks.1.fc1" and "parameter[weight]" in first["evidence"]


def test_loose_tolerance_and_route_overrides_accept_a_known_difference(reference: Path, tmp_path: Path) -> None:
    buggy = record_tiny_net(tmp_path / "gelu", Knobs(bug_gelu="tanh"))
    assert tracespec.compare(reference, buggy).status == "fail"
    assert tracespec.compare(reference, buggy, atol=1e-2, rtol=1e-2).status == "pass"
    only_there = tracespec.compare(reference, buggy, tolerances={"blocks.1.act": {"atol": 1e-2}})
    first = only_there.first_divergence
    # the activation's difference is accepted where it is made (and so wherever that tensor is
    # consumed); the next module amplifies it beyond its own tolerance, so it is the first culprit
    assert first is not None and (first["a"]["route"], first["kind"]) == ("blocks.1.fc2", "introduced")
    act = next(n for n in only_there.nodes if n["a"]["route"] == "blocks.1.act")
    assert act["status"] == "pass_within_tolerance"


def test_modes_stats_and_bitwise(reference: Path, tmp_path: Path) -> None:
    einsum = record_tiny_net(tmp_path / "einsum", Knobs(einsum=True))
    assert tracespec.compare(reference, einsum, mode="bitwise").status == "fail"
    assert tracespec.compare(reference, einsum, mode="stats").status == "pass"
    assert tracespec.compare(reference, einsum, mode="mean").status == "pass"
    eps = record_tiny_net(tmp_path / "eps", Knobs(bug_ln_eps=1e-2))
    stats = tracespec.compare(reference, eps, mode="stats")
    assert stats.status == "fail" and stats.first_divergence["a"]["route"] == "blocks.1.ln"  # type: ignore[index]
    assert all(n["metrics"]["kind"] in ("stats", "hash") for n in stats.nodes if n["metrics"])
