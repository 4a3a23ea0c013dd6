"""The noise floor of gradients follows the computation that produced them (tracespec.compare.noise)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import tracespec
from tracespec.testing.synthetic import SyntheticRecorder

RNG = np.random.default_rng(3)
LIVE_GRAD = RNG.standard_normal((16, 16)).astype(np.float32)  # RMS ~1
ZERO_GRAD = (RNG.standard_normal((16, 16)) * 1e-9).astype(np.float32)  # analytically 0: cancellation noise


def _record(path: Path, cancelled_grad: np.ndarray) -> Path:
    """A block of two Linear layers: ``live`` has a real gradient, ``cancelled`` one that is
    mathematically zero (what d mean(LayerNorm(x)) gives every parameter before the LayerNorm)."""
    x = np.ones((2, 16), np.float32)
    weight = np.eye(16, dtype=np.float32)
    with SyntheticRecorder(path) as rec:
        block = rec.module("", "Block")
        cancelled = rec.module("cancelled", "Linear", block, {"weight": weight})
        live = rec.module("live", "Linear", block, {"weight": weight})
        with rec.forward(block, x) as top:
            with rec.forward(cancelled, x) as call:
                h = call.output(x)
            with rec.forward(live, h) as call:
                top.output(call.output(h))
        rec.parameter_grads(live, {"weight": LIVE_GRAD})
        rec.parameter_grads(cancelled, {"weight": cancelled_grad})
        rec.end_step()
    return path


def _grad_record(verdict: tracespec.Verdict, route: str) -> dict:  # type: ignore[type-arg]
    return next(r for n in verdict.nodes if n["a"]["route"] == route for r in n["records"] if r["role"] == "parameter_grad")


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _record(tmp_path_factory.mktemp("a") / "trace", ZERO_GRAD)


def test_cancellation_noise_in_a_zero_gradient_passes_against_its_scope(reference: Path, tmp_path: Path) -> None:
    other_noise = (RNG.standard_normal((16, 16)) * 1e-9).astype(np.float32)  # 100% of its own RMS
    verdict = tracespec.compare(reference, _record(tmp_path / "b", other_noise))
    assert verdict.status == "pass", verdict.first_divergence
    record = _grad_record(verdict, "cancelled")
    assert record["noise"]["scale_from"] == "scope" and record["noise"]["scope"] == ""
    assert record["noise"]["scale"] == pytest.approx(np.sqrt(np.mean(LIVE_GRAD.astype(np.float64) ** 2) / 2), rel=1e-3)


def test_a_real_error_in_a_zero_gradient_still_fails(reference: Path, tmp_path: Path) -> None:
    # 1e-4 of the scope's gradients: 13x the float32 norm-wise bound, far above cancellation noise
    wrong = (ZERO_GRAD + np.float32(1e-4)).astype(np.float32)
    verdict = tracespec.compare(reference, _record(tmp_path / "b", wrong))
    first = verdict.first_divergence
    assert first is not None and (first["stage"], first["a"]["route"], first["kind"]) == ("backward", "cancelled", "introduced")


def test_a_gradient_of_ordinary_size_keeps_its_own_scale(tmp_path: Path) -> None:
    # 1e-2 of its scope: small, not a cancellation; judged against a larger scope, a wrong
    # backward of 1e-3 relative (130x the float32 bound) would pass
    small = (LIVE_GRAD * np.float32(1e-2)).astype(np.float32)
    verdict = tracespec.compare(
        _record(tmp_path / "a", small), _record(tmp_path / "b", (small * np.float32(1.001)).astype(np.float32))
    )
    record = _grad_record(verdict, "cancelled")
    assert record["noise"]["scale_from"] != "scope" and record["status"] == "diverged"
