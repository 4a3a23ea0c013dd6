"""The three BERT comparisons of examples/bert, run as documented, with their outcomes asserted."""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "bert"
sys.path.insert(0, str(EXAMPLE))

import hf_bert  # noqa: E402
import paddle_bert  # noqa: E402
import run as bert_run  # noqa: E402

from tracespec.cli import cli  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """PyTorch fp32, forward and backward, recorded once for every comparison.

    The traces (about 200 MB each, full capture) are removed afterwards: pytest keeps its last
    temporary folders, and this machine is shared.
    """
    folder = tmp_path_factory.mktemp("bert")
    inputs = hf_bert.tokenize()
    bert_run.record_run("torch_fp32", folder / "torch_fp32", inputs)
    yield {"folder": folder, "inputs": inputs, "a": folder / "torch_fp32"}
    shutil.rmtree(folder, ignore_errors=True)


def _diff(reference: dict[str, Any], comparison: str, bug: str | None = None) -> tuple[int, dict[str, Any], str]:
    """Record B, run the documented ``tracespec diff`` command; exit code, verdict, HTML report."""
    run = bert_run.RUN_OF[comparison]
    out = reference["folder"] / f"{comparison}_{bug or 'ok'}"
    out.mkdir()
    b = out / run
    bert_run.record_run(run, b, reference["inputs"], bug)
    done = CliRunner().invoke(cli, bert_run.diff_command(comparison, reference["a"], b, out))
    assert done.exit_code in (0, 1), done.output
    return done.exit_code, json.loads((out / "verdict.json").read_text()), (out / "report.html").read_text()


def _layers(verdict: dict[str, Any], stage: str) -> dict[str, float]:
    return {
        p["route"]: p["rel_rmse"]
        for p in verdict["error_growth"]
        if p["stage"] == stage and p["route"].count(".") == 2 and p["route"].startswith("encoder.layer.")
    }


def test_bf16_is_within_bf16_noise_and_the_error_grows_layer_by_layer(reference: dict[str, Any]) -> None:
    code, verdict, html = _diff(reference, "bf16")
    assert code == 0 and verdict["status"] == "pass"
    forward = _layers(verdict, "forward")
    assert len(forward) == 6
    first, last = forward["encoder.layer.0"], forward["encoder.layer.5"]
    # bf16 keeps 8 bits: one rounding is ~2e-3 relative; six layers compound it, without blowing up
    assert 1e-3 < first < last < 5e-2
    backward = _layers(verdict, "backward")
    assert backward["encoder.layer.0"] > backward["encoder.layer.5"]  # gradients flow back, error grows
    assert "Layer by layer" in html


def test_onnx_export_passes_aligned_by_route(reference: dict[str, Any]) -> None:
    code, verdict, _ = _diff(reference, "onnx")
    assert code == 0 and verdict["status"] == "pass"
    coverage = verdict["coverage"]["ranks"]["0"]
    # every module of the export found its PyTorch counterpart by its route, without a layer map
    assert coverage["by_method"] == {"layer_map": 0, "exact": coverage["matched"], "structural": 0, "dataflow": 0, "fused": 0}
    assert coverage["matched"] >= 100
    routes = {u["a"]["route"] for u in verdict["nodes"]}
    assert {f"encoder.layer.{i}.attention.self.query" for i in range(6)} <= routes
    assert all(u["a"]["route"] == u["b"]["route"] for u in verdict["nodes"])
    # dropouts vanish in export (the identity in eval mode): each is compared as part of the layer
    # before it, whose weights still compare, and every leaf call of the PyTorch model is compared
    folded = [u for u in verdict["nodes"] if u["alignment"] == "fused"]
    assert folded and all(u["a"]["routes"][1].endswith("dropout") for u in folded)
    assert coverage["calls"]["fraction_a"] == 1.0
    # the exporter's [in, out] weights, said so by the adapter, are transposed back; the pooler's
    # Gemm keeps PyTorch's [out, in], and its weight is compared as it is
    weights = {
        u["a"]["route"]: r for u in verdict["nodes"] for r in u["records"] if r["role"] == "parameter" and r["slot"] == "weight"
    }
    assert weights["encoder.layer.0.attention.self.query"]["transform"] == "transpose"
    assert "transform" not in weights["pooler.dense"]
    assert all(r["status"] == "pass" for r in weights.values())


def test_paddle_port_passes(reference: dict[str, Any]) -> None:
    code, verdict, _ = _diff(reference, "paddle")
    assert code == 0 and verdict["status"] == "pass", verdict["hint"]
    assert verdict["coverage"]["ranks"]["0"]["matched"] == verdict["coverage"]["ranks"]["0"]["nodes_a"]
    # the verdict covers the backward pass too: every gradient, of parameters and of module
    # inputs (BertSelfAttention feeds its input to query, key and value: their sum), agrees
    backward = [u for u in verdict["nodes"] if u["stage"] == "backward"]
    gradients = [r for u in backward for r in u["records"]]
    assert len([r for r in gradients if r["role"] == "parameter_grad"]) >= 100
    assert len([r for r in gradients if r["role"] == "grad_input"]) >= 100
    assert all(u["status"] in ("pass", "pass_within_tolerance", "skipped") for u in backward)
    assert sum(u["status"] != "skipped" for u in backward) >= 100


@pytest.mark.parametrize("bug", paddle_bert.BUGS)
def test_paddle_porting_bug_is_named(reference: dict[str, Any], bug: str) -> None:
    code, verdict, html = _diff(reference, "paddle", bug)
    assert code == 1
    first = verdict["first_divergence"]
    culprit = paddle_bert.BUG_ROUTES[bug]
    assert (first["stage"], first["kind"], first["a"]["route"], first["b"]["route"]) == (
        "forward",
        "introduced",
        culprit,
        culprit,
    )
    later = [u for u in verdict["nodes"] if u["stage"] == "forward" and u["divergence"] == "inherited"]
    assert later  # the modules after it only inherit the error
    assert f'"{culprit}"' in html
