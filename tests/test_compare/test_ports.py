"""PyTorch against PaddlePaddle ports of the same network, with the same weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import tracespec
from test_compare.port_models import record_paddle, record_torch


@pytest.fixture(scope="module")
def torch_trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return record_torch(tmp_path_factory.mktemp("torch") / "trace")


def test_same_names_pass_with_linear_layouts_transposed(torch_trace: Path, tmp_path: Path) -> None:
    verdict = tracespec.compare(torch_trace, record_paddle(tmp_path / "paddle"))
    assert verdict.status == "pass", verdict.first_divergence
    assert verdict.coverage["ranks"]["0"]["by_method"]["exact"] == 13
    linear_weights = [
        r
        for n in verdict.nodes
        if n["a"]["class_name"] == "Linear"
        for r in n["records"]
        if r["role"] in ("parameter", "parameter_grad") and r["slot"] == "weight"
    ]
    assert linear_weights and all(r["transform"] == "transpose" for r in linear_weights)
    assert all(r["status"] != "diverged" for r in linear_weights)


def test_renamed_submodules_align_without_a_layer_map(torch_trace: Path, tmp_path: Path) -> None:
    verdict = tracespec.compare(torch_trace, record_paddle(tmp_path / "paddle", renamed=True))
    assert verdict.status == "pass", verdict.first_divergence
    coverage = verdict.coverage["ranks"]["0"]
    assert coverage["matched"] == 13 and coverage["by_method"]["structural"] == 12
    assert verdict.unmatched == []
    pairs = {(n["a"]["route"], n["b"]["route"]) for n in verdict.nodes}
    assert ("blocks.1.fc1", "layers.1.up") in pairs and ("head", "lm_head") in pairs


def test_a_short_layer_map_pins_the_renames(torch_trace: Path, tmp_path: Path) -> None:
    layer_map = tmp_path / "map.json"
    layer_map.write_text(
        json.dumps(
            {
                "map": [
                    {"a": "blocks", "b": "layers"},
                    {"a": "blocks.*.norm", "b": "layers.*.pre_norm"},
                    {"a": "re:^blocks\\.(\\d+)\\.fc1$", "b": "layers.\\1.up"},
                ]
            }
        )
    )
    verdict = tracespec.compare(torch_trace, record_paddle(tmp_path / "paddle", renamed=True), layer_map=layer_map)
    assert verdict.status == "pass"
    assert verdict.coverage["ranks"]["0"]["by_method"]["layer_map"] == 5


def test_a_porting_bug_is_found_across_frameworks_and_names(torch_trace: Path, tmp_path: Path) -> None:
    verdict = tracespec.compare(torch_trace, record_paddle(tmp_path / "paddle", renamed=True, epsilon=1e-3))
    first = verdict.first_divergence
    assert first is not None and first["kind"] == "introduced" and first["stage"] == "forward"
    assert (first["a"]["route"], first["b"]["route"]) == ("blocks.0.norm", "layers.0.pre_norm")
