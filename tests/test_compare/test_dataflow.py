"""Alignment by what the calls compute: flat ports, shared modules, folded batch norms, layer maps
that pin calls, and the sequence aligner itself."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

import tracespec
from test_compare import cnn_ports
from tracespec.cli import cli
from tracespec.compare import validate_verdict
from tracespec.compare.dataflow import CallInfo, ValueSignature, _longest_chain, align_call_sequences, value_distance
from tracespec.compare.families import op_family


@pytest.fixture(scope="module")
def traces(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("cnn")
    net = cnn_ports.reference()
    found = {"a": cnn_ports.record(net, folder / "a")}
    for bug in (None, "eps", "weight"):
        found[f"flat_{bug}"] = cnn_ports.record(cnn_ports.flat_port(net, bug), folder / f"flat_{bug}")
    found["onnx"] = cnn_ports.record_onnx_export(net, folder / "onnx")
    found["onnx_dynamo"] = cnn_ports.record_onnx_export(net, folder / "onnx_dynamo", dynamo=True)
    return found


def _calls(verdict: tracespec.Verdict) -> dict[str, object]:
    return verdict.coverage["ranks"]["0"]["calls"]


def _pairs(verdict: tracespec.Verdict, stage: str = "forward") -> set[tuple[str, str]]:
    return {(n["a"]["route"], n["b"]["route"]) for n in verdict.nodes if n["stage"] == stage}


def test_a_flat_port_aligns_call_by_call(traces: dict[str, Path]) -> None:
    verdict = tracespec.compare(traces["a"], traces["flat_None"])
    assert verdict.status == "pass", verdict.first_divergence
    calls = _calls(verdict)
    # only the final Linear, a functional matmul + add in the port, has no counterpart
    assert calls["compared_a"] == calls["leaf_a"] - 1 and calls["fraction_b"] == 1.0
    assert [(u["side"], u["route"]) for u in verdict.unmatched] == [("a", "fc")]
    assert "records no call between 'avgpool' and the end" in verdict.unmatched[0]["reason"]
    pairs = _pairs(verdict)
    # the ReLU module each block calls twice aligns with two ReLU modules of the port, call by call
    assert {("layer1.0.relu", "relu1"), ("layer1.0.relu", "relu2"), ("layer2.0.downsample.1", "batchnorm7")} <= pairs
    # containers get a counterpart: the span of the port's calls that computes their boundary
    block = next(n for n in verdict.nodes if n["a"]["route"] == "layer1.0" and n["stage"] == "forward")
    assert block["alignment"] == "dataflow" and block["status"] == "pass"
    # and the weights of layers paired by dataflow are compared
    conv = next(n for n in verdict.nodes if n["a"]["route"] == "layer2.0.conv1" and n["stage"] == "backward")
    assert any(r["role"] == "parameter_grad" and r["slot"] == "weight" for r in conv["records"])


@pytest.mark.parametrize(
    ("bug", "culprit_a", "culprit_b", "evidence"),
    [
        ("eps", "layer2.0.bn1", "batchnorm5", "although its inputs and parameters agree"),
        ("weight", "layer1.1.conv1", "conv2d3", "its own parameter[weight] differ(s)"),
    ],
)
def test_a_bug_in_a_flat_port_is_named_at_its_leaf_on_both_sides(
    traces: dict[str, Path], bug: str, culprit_a: str, culprit_b: str, evidence: str
) -> None:
    verdict = tracespec.compare(traces["a"], traces[f"flat_{bug}"])
    first = verdict.first_divergence
    assert first is not None and first["kind"] == "introduced" and first["stage"] == "forward"
    assert (first["a"]["route"], first["b"]["route"]) == (culprit_a, culprit_b)
    assert evidence in first["evidence"]
    # the blocks around it contain it; they are not blamed
    contains = {n["a"]["route"] for n in verdict.nodes if n["divergence"] == "contains" and n["stage"] == "forward"}
    assert {"", culprit_a.rsplit(".", 2)[0]} <= contains


@pytest.mark.parametrize(
    ("export", "shortcut"),
    [
        # the TorchScript exporter keeps the convolution's scope for the folded Conv
        ("onnx", "layer2.0.downsample.0"),
        # the torch.export-based one keeps routes, but puts the folded Conv in the batch norm's scope, and
        # records one call of the shared ReLU for two
        ("onnx_dynamo", "layer2.0.downsample.1"),
    ],
)
def test_batch_norms_folded_by_the_exporter_compare_as_fused_groups(traces: dict[str, Path], export: str, shortcut: str) -> None:
    verdict = tracespec.compare(traces["a"], traces[export])
    assert verdict.status == "pass", verdict.first_divergence
    calls = _calls(verdict)
    assert calls["fraction_a"] == 1.0 and calls["by_method"]["fused"] >= 20
    # B's side: each folded Conv counts once; the residual Adds ONNX records and A computes
    # functionally are B's unmatched calls
    assert calls["by_method_b"]["fused"] == 10 and calls["compared_b"] == sum(calls["by_method_b"].values())
    fused = [n for n in verdict.nodes if n["alignment"] == "fused" and n["stage"] == "forward"]
    assert any(
        n["a"]["routes"] == ["layer2.0.downsample.0", "layer2.0.downsample.1"] and n["b"]["routes"] == [shortcut] for n in fused
    )
    # a folded group is compared at its boundary only: never its convolution's output nor its weights
    assert all(r["role"] in ("input", "output") and r["slot"] == "0" for n in fused for r in n["records"])
    validate_verdict(verdict.to_json())  # groups, alignment methods and call coverage are in the schema


def test_a_bug_folded_into_a_fused_convolution_names_the_group(tmp_path: Path) -> None:
    net = cnn_ports.reference()
    a = cnn_ports.record(net, tmp_path / "a")
    with __import__("torch").no_grad():
        net.layer1[1].bn2.running_var.mul_(1.5)
    verdict = tracespec.compare(a, cnn_ports.record_onnx_export(net, tmp_path / "onnx"))
    first = verdict.first_divergence
    assert first is not None and first["kind"] == "introduced" and first["stage"] == "forward"
    assert first["a"]["routes"] == ["layer1.1.conv2", "layer1.1.bn2"]
    assert first["b"]["routes"] == ["layer1.1.conv2"] and first["alignment"] == "fused"


def test_the_saved_map_reproduces_the_alignment(traces: dict[str, Path], tmp_path: Path) -> None:
    runner = CliRunner()
    layer_map = tmp_path / "map.yaml"
    for name in ("onnx", "flat_eps"):
        found = runner.invoke(
            cli,
            ["diff", str(traces["a"]), str(traces[name]), "--save-map", str(layer_map), "--json", str(tmp_path / "found.json")],
        )
        text = layer_map.read_text()
        assert "#" in text.split("version:")[0] and "version: 1" in text
        again = runner.invoke(
            cli,
            ["diff", str(traces["a"]), str(traces[name]), "--layer-map", str(layer_map), "--json", str(tmp_path / "again.json")],
        )
        assert (found.exit_code, again.exit_code) == ((0, 0) if name == "onnx" else (1, 1)), again.output
        before, after = (json.loads((tmp_path / f).read_text()) for f in ("found.json", "again.json"))
        assert before["first_divergence"] == after["first_divergence"] or (
            before["first_divergence"]["a"]["route"] == after["first_divergence"]["a"]["route"]
        )
        units = {(n["stage"], n["a"]["route"], n["call"], n["b"]["route"]) for n in before["nodes"]}
        assert units == {(n["stage"], n["a"]["route"], n["call"], n["b"]["route"]) for n in after["nodes"]}
        coverage = after["coverage"]["ranks"]["0"]["calls"]
        assert coverage["compared_a"] == before["coverage"]["ranks"]["0"]["calls"]["compared_a"]
        assert coverage["by_method"]["layer_map"] >= coverage["compared_a"] - 2


def test_a_layer_map_pins_calls_and_groups(traces: dict[str, Path], tmp_path: Path) -> None:
    layer_map = tmp_path / "map.json"
    # deliberately cross two ReLU calls: the map wins over what the values say
    layer_map.write_text(
        json.dumps(
            {
                "map": [
                    {"a": "layer1.0.relu#0", "b": "relu2"},
                    {"a": "layer1.0.relu#1", "b": "relu1"},
                    {"a": ["conv1", "bn1"], "b": ["conv2d0", "batchnorm0"]},
                ]
            }
        )
    )
    verdict = tracespec.compare(traces["a"], traces["flat_None"], layer_map=layer_map)
    pairs = {(n["a"]["route"], n["call"], n["b"]["route"], n["alignment"]) for n in verdict.nodes if n["stage"] == "forward"}
    assert {("layer1.0.relu", 0, "relu2", "layer_map"), ("layer1.0.relu", 1, "relu1", "layer_map")} <= pairs
    assert ("bn1", 0, "batchnorm0", "layer_map") in pairs
    # the crossed ReLUs now differ: the map is followed, and the diff says so
    assert verdict.status == "fail" and verdict.first_divergence["a"]["route"] == "layer1.0.relu"


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"a": ["conv1", "bn*"], "b": "conv2d0"}, "names exact routes, not patterns"),
        ({"a": "conv1#3", "b": "conv2d0"}, "names a call that A's first step does not have"),
        ({"a": [], "b": "conv2d0"}, "an empty list"),
    ],
)
def test_a_bad_call_entry_is_one_line_and_exit_3(
    traces: dict[str, Path], tmp_path: Path, entry: dict[str, object], message: str
) -> None:
    layer_map = tmp_path / "map.json"
    layer_map.write_text(json.dumps({"map": [entry]}))
    done = CliRunner().invoke(cli, ["diff", str(traces["a"]), str(traces["flat_None"]), "--layer-map", str(layer_map)])
    assert done.exit_code == 3 and message in done.output and "Traceback" not in done.output


def test_low_coverage_is_said_loudly(traces: dict[str, Path], tmp_path: Path) -> None:
    done = CliRunner().invoke(cli, ["diff", str(traces["a"]), str(traces["flat_None"])])
    assert done.exit_code == 0 and "LOW COVERAGE" not in done.output
    assert "compared 31 of 32 leaf calls of A (97%)" in done.output.splitlines()[1]
    layer_map = tmp_path / "map.json"
    # ignoring most of B's layers is how a user makes most of A unmatched: the warning must say so
    layer_map.write_text(json.dumps({"ignore": {"b": ["relu*", "conv2d*"]}}))
    done = CliRunner().invoke(cli, ["diff", str(traces["a"]), str(traces["flat_None"]), "--layer-map", str(layer_map)])
    assert done.exit_code == 0
    assert "warning: LOW COVERAGE (rank 0: 75% of A's leaf calls compared)" in done.output
    assert "PASS: no divergence in the 75% of A's leaf calls compared (LOW COVERAGE, see above)" in done.output


# --------------------------------------------------------------------------- the sequence aligner
def _info(index: int, family: str, shape: tuple[int, ...], mean: float | None = None, params: tuple[int, ...] = ()) -> CallInfo:
    value = ValueSignature(
        shape,
        mean,
        None if mean is None else abs(mean) + 1.0,
        None if mean is None else mean - 1,
        None if mean is None else mean + 1,
        None,
    )
    return CallInfo(index, 0, index, index, f"n{index}", family, op_family(family), None, value, params)


def test_an_op_on_one_side_only_leaves_a_gap_without_shifting_its_neighbours() -> None:
    a = [_info(0, "Conv2d", (1, 8)), _info(1, "ReLU", (1, 8)), _info(2, "Linear", (1, 4)), _info(3, "Softmax", (1, 4))]
    b = [_info(0, "Conv", (1, 8)), _info(1, "Relu", (1, 8)), _info(2, "Softmax", (1, 4))]
    pairings = align_call_sequences(a, b)
    assert [(p.a, p.b) for p in pairings] == [((0,), (0,)), ((1,), (1,)), ((3,), (2,))]


def test_a_batch_norm_without_a_counterpart_folds_into_the_convolution_before_it() -> None:
    a = [_info(0, "Conv2d", (1, 8), mean=3.0), _info(1, "BatchNorm2d", (1, 8), mean=0.1), _info(2, "ReLU", (1, 8), mean=0.5)]
    b = [_info(0, "Conv", (1, 8), mean=0.1), _info(1, "Relu", (1, 8), mean=0.5)]
    pairings = align_call_sequences(a, b)
    assert [(p.a, p.b, p.method, p.same_layer) for p in pairings] == [
        ((0, 1), (0,), "fused", False),
        ((2,), (1,), "dataflow", True),
    ]


def test_values_pair_calls_across_an_order_change() -> None:
    a = [_info(0, "Conv2d", (1, 8), mean=1.0), _info(1, "Conv2d", (1, 8), mean=2.0), _info(2, "Add", (1, 8), mean=3.0)]
    b = [_info(0, "Conv", (1, 8), mean=2.0), _info(1, "Conv", (1, 8), mean=1.0), _info(2, "Add", (1, 8), mean=3.0)]
    pairings = align_call_sequences(a, b)
    assert sorted((p.a, p.b) for p in pairings) == [((0,), (1,)), ((1,), (0,)), ((2,), (2,))]


def test_value_distance_is_relative_and_needs_equal_sizes() -> None:
    x = ValueSignature((4,), 0.0, 1.0, -2.0, 2.0, None)
    assert value_distance(x, ValueSignature((4,), 1e-6, 1.0, -2.0, 2.0, None)) == pytest.approx(1e-6)
    assert value_distance(x, ValueSignature((2, 2), 0.0, 1.0, -2.0, 2.0, None)) == 0.0
    assert value_distance(x, ValueSignature((5,), 0.0, 1.0, -2.0, 2.0, None)) is None
    assert value_distance(x, ValueSignature((4,), None, None, None, None, None)) is None


@given(st.lists(st.tuples(st.integers(0, 30), st.integers(0, 30)), max_size=30, unique_by=lambda p: p[0]))
def test_the_longest_chain_increases_in_both_indices_and_is_longest(pairs: list[tuple[int, int]]) -> None:
    chain = _longest_chain(pairs)
    assert all(x[0] < y[0] and x[1] < y[1] for x, y in itertools.pairwise(chain))
    assert set(chain) <= set(pairs)
    ordered = sorted(pairs)
    best = [1] * len(ordered)  # quadratic reference
    for k in range(len(ordered)):
        for m in range(k):
            if ordered[m][1] < ordered[k][1]:
                best[k] = max(best[k], best[m] + 1)
    assert len(chain) == max(best, default=0)


@pytest.mark.parametrize(
    ("names", "family"),
    [
        (("Conv2d", "Conv2D", "Conv", "OnnxConv"), "conv"),
        (("Linear", "Gemm", "OnnxGemm"), "linear"),
        (("BatchNorm2d", "BatchNorm2D", "BatchNormalization", "BatchNorm"), "batchnorm"),
        (("MaxPool2d", "MaxPool2D", "MaxPool"), "maxpool"),
        (
            ("AdaptiveAvgPool2d", "AdaptiveAvgPool2D", "GlobalAveragePool", "OnnxGlobalAveragePoolWithKnownInputShape"),
            "globalavgpool",
        ),
        (("LayerNorm", "LayerNormalization"), "layernorm"),
        (("GELU", "Gelu"), "gelu"),
        (("ReLU", "Relu", "MatMul_3"), None),
    ],
)
def test_each_framework_name_has_one_family(names: tuple[str, ...], family: str | None) -> None:
    families = {op_family(name) for name in names}
    if family is None:
        assert families == {"relu", "matmul"}
    else:
        assert families == {family}


def test_a_record_on_one_side_only_says_which(traces: dict[str, Path]) -> None:
    verdict = tracespec.compare(traces["a"], traces["onnx"])
    validate_verdict(verdict.to_json())
    # ONNX Runtime records no backward: every input gradient of A is said to be A's alone
    missing = [r for n in verdict.nodes if n["stage"] == "backward" for r in n["records"] if r.get("mismatch")]
    assert missing and all(r["mismatch"]["kind"] == "missing" and r["shape"]["b"] is None for r in missing)
    assert all(r["note"].startswith("only in A: B recorded no grad_input[") for r in missing)
