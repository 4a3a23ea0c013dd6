"""The ONNX Runtime adapter against real torch.onnx exports, ONNX Runtime and numpy."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

import tracespec
from tracespec.adapters.onnxruntime import OnnxRecorder
from tracespec.errors import InputFileError, UsageError
from tracespec.format.stats import TensorStats, compute_stats

VOCAB, WIDTH, HEADS, HIDDEN, LAYERS, SEQ, BATCH = 61, 24, 3, 48, 2, 7, 2


class Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q_proj = nn.Linear(WIDTH, WIDTH)
        self.k_proj = nn.Linear(WIDTH, WIDTH)
        self.v_proj = nn.Linear(WIDTH, WIDTH)
        self.o_proj = nn.Linear(WIDTH, WIDTH)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq, width = x.shape
        split = (batch, seq, HEADS, width // HEADS)
        q = self.q_proj(x).view(split).transpose(1, 2)
        k = self.k_proj(x).view(split).transpose(1, 2)
        v = self.v_proj(x).view(split).transpose(1, 2)
        weights = torch.softmax(q @ k.transpose(-1, -2) / (width // HEADS) ** 0.5, dim=-1)
        return self.o_proj((weights @ v).transpose(1, 2).reshape(batch, seq, width))


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(WIDTH, HIDDEN)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(HIDDEN, WIDTH)
        self.drop = nn.Dropout(0.1)  # vanishes from an eval-mode export

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.act(self.fc1(x))))


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(WIDTH)
        self.attn = Attention()
        self.ln2 = nn.LayerNorm(WIDTH)
        self.mlp = MLP()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class TinyGPT(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, WIDTH)
        self.blocks = nn.ModuleList(Block() for _ in range(LAYERS))
        self.ln_f = nn.LayerNorm(WIDTH)
        self.head = nn.Linear(WIDTH, VOCAB, bias=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids)
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


def _model() -> TinyGPT:
    torch.manual_seed(0)
    model = TinyGPT().eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("ln1.weight", "ln2.weight", "ln_f.weight")):
                # Distinct values: exporters merge identical initializers (all-ones LayerNorms).
                param.uniform_(0.5, 1.5)
    return model


def _export(model: nn.Module, ids: torch.Tensor, path: Path, dynamo: bool) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation notes from the exporters themselves
        torch.onnx.export(model, (ids,), str(path), dynamo=dynamo, input_names=["ids"], verbose=False)
    return path


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("onnx")
    model = _model()
    ids = torch.randint(0, VOCAB, (BATCH, SEQ), generator=torch.Generator().manual_seed(1))
    return {
        "model": model,
        "ids": ids,
        "torchscript": _export(model, ids, folder / "torchscript.onnx", dynamo=False),
        "dynamo": _export(model, ids, folder / "dynamo.onnx", dynamo=True),
    }


def _pytorch_reference(model: nn.Module, ids: torch.Tensor, path: Path) -> dict[str, dict[str, Any]]:
    """Each called module's input "0" and output "0", recorded by tracespec's PyTorch adapter."""
    with torch.no_grad(), tracespec.record(model, path, capture="full"):
        model(ids)
    trace = tracespec.load_trace(path)
    nodes, records = _records(trace)
    seen: dict[str, dict[str, Any]] = {}
    for row in records:
        node = nodes[row["node"]]
        if node["kind"] == "module" and row["role"] in ("input", "output") and row["slot"] == "0" and row["array"]:
            seen.setdefault(node["route"], {})[row["role"]] = row
    return {
        route: {
            "input": trace.read(0, rows["input"]["array"]) if "input" in rows else None,
            "output": trace.read(0, rows["output"]["array"]),
            # A module that hands its input back (Dropout in eval mode) vanishes in export.
            "passthrough": "input" in rows and rows["input"]["array"] == rows["output"]["array"],
        }
        for route, rows in seen.items()
        if "output" in rows
    }


def _records(trace: tracespec.Trace) -> tuple[dict[int, dict[str, Any]], list[dict[str, Any]]]:
    nodes = {row["node"]: row for row in trace.nodes().to_pylist()}
    return nodes, trace.tensors().to_pylist()


def _tensor(
    trace: tracespec.Trace, nodes: dict[int, dict[str, Any]], records: list[dict[str, Any]], route: str, role: str, slot: str
) -> np.ndarray | None:
    for row in records:
        if nodes[row["node"]]["route"] == route and row["role"] == role and row["slot"] == slot and row["array"]:
            return trace.read(0, row["array"])
    return None


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_modules_align_with_pytorch_by_route(exported: dict[str, Any], exporter: str, tmp_path: Path) -> None:
    ids = exported["ids"]
    outputs = tracespec.record_onnx(exported[exporter], {"ids": ids.numpy()}, tmp_path / "trace", capture="full")
    trace = tracespec.load_trace(tmp_path / "trace")
    nodes, records = _records(trace)
    reference = _pytorch_reference(exported["model"], ids, tmp_path / "torch")

    surviving = [route for route, seen in reference.items() if not seen["passthrough"]]
    assert len(surviving) >= 25 and "blocks.1.mlp.drop" not in surviving
    matched = []
    for route in surviving:
        output = _tensor(trace, nodes, records, route, "output", "0")
        if output is None:
            continue
        matched.append(route)
        np.testing.assert_allclose(output, reference[route]["output"], rtol=1e-4, atol=1e-5, err_msg=route)
        onnx_input = _tensor(trace, nodes, records, route, "input", "0")
        if onnx_input is not None and reference[route]["input"] is not None and onnx_input.dtype == np.float32:
            np.testing.assert_allclose(onnx_input, reference[route]["input"], rtol=1e-4, atol=1e-5, err_msg=route)
    assert len(matched) >= 0.9 * len(surviving), sorted(set(surviving) - set(matched))
    np.testing.assert_allclose(
        outputs[0][onnx.load(str(exported[exporter])).graph.output[0].name], reference[""]["output"], rtol=1e-4, atol=1e-5
    )

    # The tree: modules keep their dotted routes, ops hang under their module with class = op type.
    by_route = {row["route"]: row for row in nodes.values()}
    assert by_route[""]["parent"] is None
    assert by_route["blocks.0.attn.q_proj"]["parent"] == by_route["blocks.0.attn"]["node"]
    assert by_route["blocks"]["kind"] == "module"
    q_proj_ops = [row for row in nodes.values() if row["parent"] == by_route["blocks.0.attn.q_proj"]["node"]]
    assert {row["class_name"] for row in q_proj_ops} >= {"MatMul"} and all(row["kind"] == "op" for row in q_proj_ops)
    if exporter == "dynamo":
        assert by_route["blocks.0.attn"]["class_name"] == "Attention"
        assert by_route["blocks.0.mlp.fc1"]["class_name"] == "Linear"

    # Parameters sit on their module: the weight as the graph holds it (transposed), the bias as is.
    q_proj = exported["model"].blocks[0].attn.q_proj
    weight = _tensor(trace, nodes, records, "blocks.0.attn.q_proj", "parameter", "weight")
    assert weight is not None
    np.testing.assert_array_equal(weight, q_proj.weight.detach().numpy().T)
    assert json.loads(by_route["blocks.0.attn.q_proj"]["attrs"])["parameter_layout"] == {"weight": "in_out"}
    bias = _tensor(trace, nodes, records, "blocks.0.attn.q_proj", "parameter", "bias")
    np.testing.assert_array_equal(bias, q_proj.bias.detach().numpy())
    ln_weight = _tensor(trace, nodes, records, "blocks.1.ln2", "parameter", "weight")
    np.testing.assert_array_equal(ln_weight, exported["model"].blocks[1].ln2.weight.detach().numpy())

    # Every call has begin < end, and a module's call encloses its ops' calls.
    calls = {row["node"]: row for row in trace.calls().to_pylist()}
    block, op = calls[by_route["blocks.0"]["node"]], calls[q_proj_ops[0]["node"]]
    assert block["begin"] < op["begin"] < op["end"] < block["end"]


def test_statistics_match_the_reference_and_levels_agree(exported: dict[str, Any], tmp_path: Path) -> None:
    feed = {"ids": exported["ids"].numpy()}
    tracespec.record_onnx(exported["dynamo"], feed, tmp_path / "full", capture="full")
    tracespec.record_onnx(exported["dynamo"], feed, tmp_path / "stats", capture="stats")
    tracespec.record_onnx(exported["dynamo"], feed, tmp_path / "hash", capture="hash")
    full = tracespec.load_trace(tmp_path / "full")
    rows = full.tensors().to_pylist()
    assert rows
    for row in rows:
        if row["array"] is None:
            continue
        expected = compute_stats(full.read(0, row["array"]))
        where = (row["node"], row["role"], row["slot"])
        # ``full`` fetches every value: its statistics are the reference's, from the data
        got = TensorStats(
            expected.count, row["min"], row["max"], row["mean"], row["std"], row["l2"], row["nan_count"], row["inf_count"]
        )
        assert got == expected, where
    stats_rows = tracespec.load_trace(tmp_path / "stats").tensors().to_pylist()
    hash_rows = tracespec.load_trace(tmp_path / "hash").tensors().to_pylist()
    assert len(stats_rows) == len(hash_rows) == len(rows)
    for a, s, h in zip(rows, stats_rows, hash_rows, strict=True):
        assert (a["role"], a["slot"], a["shape"]) == (s["role"], s["slot"], s["shape"]) == (h["role"], h["slot"], h["shape"])
        assert s["array"] is None and h["array"] is None
        if a["mean"] is None:
            assert s["mean"] is None
            continue
        # ``stats`` computes in the graph: float32 row sums added in float64 (docs/onnx.md),
        # a relative error of about 1e-7 against the reference
        assert (s["min"], s["max"], s["nan_count"], s["inf_count"]) == (a["min"], a["max"], a["nan_count"], a["inf_count"])
        rms = a["l2"] / max(math.prod(a["shape"]), 1) ** 0.5
        assert s["mean"] == pytest.approx(a["mean"], abs=1e-6 * rms + 1e-30)
        assert s["std"] == pytest.approx(a["std"], rel=1e-6, abs=1e-6 * rms + 1e-30)
        assert s["l2"] == pytest.approx(a["l2"], rel=1e-6)
        assert h["hash"] == a["hash"]


def test_selection_by_route_and_by_op_type(exported: dict[str, Any], tmp_path: Path) -> None:
    feed = {"ids": exported["ids"].numpy()}
    tracespec.record_onnx(
        exported["torchscript"], feed, tmp_path / "route", include="blocks.0.*", exclude="*.mlp*", capture="full"
    )
    trace = tracespec.load_trace(tmp_path / "route")
    nodes, records = _records(trace)
    routes = {nodes[row["node"]]["route"] for row in records}
    assert "blocks.0.attn.q_proj" in routes and "blocks.0.ln2" in routes
    assert all(r.startswith("blocks.0.") and ".mlp" not in r for r in routes), routes

    tracespec.record_onnx(
        exported["dynamo"], feed, tmp_path / "ops", include_ops=["Softmax"], modules=False, parameters=False, capture="full"
    )
    trace = tracespec.load_trace(tmp_path / "ops")
    nodes, records = _records(trace)
    recorded = {nodes[row["node"]]["route"] for row in records}
    assert recorded == {"blocks.0.attn.Softmax", "blocks.1.attn.Softmax"}
    probabilities = _tensor(trace, nodes, records, "blocks.1.attn.Softmax", "output", "0")
    assert probabilities is not None
    np.testing.assert_allclose(probabilities.sum(-1), 1.0, rtol=1e-5)

    tracespec.record_onnx(exported["dynamo"], feed, tmp_path / "no-matmul", exclude_ops="MatMul", modules=False, capture="full")
    nodes, _ = _records(tracespec.load_trace(tmp_path / "no-matmul"))
    op_types = {row["class_name"] for row in nodes.values() if row["kind"] == "op"}
    assert "MatMul" not in op_types and "Softmax" in op_types


def test_recording_in_several_runs_gives_the_same_trace(exported: dict[str, Any], tmp_path: Path) -> None:
    feed = {"ids": exported["ids"].numpy()}
    tracespec.record_onnx(exported["dynamo"], feed, tmp_path / "one", capture="full")
    tracespec.record_onnx(exported["dynamo"], feed, tmp_path / "many", outputs_per_run=5, capture="full")
    one = tracespec.load_trace(tmp_path / "one").tensors().to_pylist()
    many = tracespec.load_trace(tmp_path / "many").tensors().to_pylist()
    assert [(r["node"], r["role"], r["slot"], r["hash"]) for r in one] == [
        (r["node"], r["role"], r["slot"], r["hash"]) for r in many
    ]


def _step_values(path: Path) -> dict[int, dict[tuple[int, str, str], np.ndarray]]:
    """Each step's recorded data: step -> (node, role, slot) -> array."""
    trace = tracespec.load_trace(path)
    steps: dict[int, dict[tuple[int, str, str], np.ndarray]] = {}
    for row in trace.tensors().to_pylist():
        if row["array"]:
            steps.setdefault(row["step"], {})[(row["node"], row["role"], row["slot"])] = trace.read(0, row["array"])
    return steps


def _wide_graph() -> onnx.ModelProto:
    """x @ w + b -> Relu -> ReduceSum: values of 128 KiB (computed into the recorder's buffers
    from the second step on) and a scalar (left to ONNX Runtime)."""
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["h"]),
            helper.make_node("Add", ["h", "b"], ["z"]),
            helper.make_node("Relu", ["z"], ["r"]),
            helper.make_node("ReduceSum", ["r"], ["total"], keepdims=0),
        ],
        "wide",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [128, 256])],
        [
            helper.make_tensor_value_info("r", TensorProto.FLOAT, [128, 256]),
            helper.make_tensor_value_info("total", TensorProto.FLOAT, []),
        ],
        [
            numpy_helper.from_array(rng.standard_normal((256, 256)).astype(np.float32), "w"),
            numpy_helper.from_array(rng.standard_normal(256).astype(np.float32), "b"),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_later_steps_computed_into_reused_buffers_keep_their_own_values(tmp_path: Path) -> None:
    """From the second step on, ONNX Runtime computes into the recorder's reused buffers: every
    step must still hold its own values, the same as a first (unbound) run of its feed gives,
    and what ``record`` returned must not change with later steps."""
    model = _wide_graph()
    rng = np.random.default_rng(7)
    feeds = [{"x": rng.standard_normal((128, 256)).astype(np.float32)} for _ in range(5)]
    recorder = OnnxRecorder(model, capture="full")
    outputs = recorder.record(feeds[:3], tmp_path / "steps")
    outputs += recorder.record(feeds[3:], tmp_path / "more_steps")  # a second trace, same buffers
    recorded = _step_values(tmp_path / "steps")
    recorded.update({step + 3: values for step, values in _step_values(tmp_path / "more_steps").items()})
    assert sorted(recorded) == [0, 1, 2, 3, 4]
    for step, feed in enumerate(feeds):
        alone = tracespec.record_onnx(model, feed, tmp_path / f"alone_{step}", capture="full")
        expected = _step_values(tmp_path / f"alone_{step}")[0]
        assert recorded[step].keys() == expected.keys()
        for key, array in expected.items():
            np.testing.assert_array_equal(recorded[step][key], array, err_msg=f"step {step}, record {key}")
        for name, value in outputs[step].items():
            np.testing.assert_array_equal(value, alone[0][name])
    assert any(not np.array_equal(recorded[0][key], recorded[1][key]) for key in recorded[0]), "the feeds differ"


def test_values_whose_shape_follows_the_data_are_recorded_each_step(tmp_path: Path) -> None:
    """NonZero's output shape depends on the values: steps with the same input shape but another
    count of positives cannot reuse the previous step's output buffers."""
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("NonZero", ["r"], ["where"])],
        "nonzero",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [20000])],
        [helper.make_tensor_value_info("where", TensorProto.INT64, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    # 10000 to 13000 positives: int64 indices of 80 KB and more, large enough to be bound.
    xs = [np.where(np.arange(20000) < positives, 1.0, -1.0).astype(np.float32) for positives in (10000, 12000, 12000, 13000)]
    outputs = OnnxRecorder(model, capture="full").record([{"x": x} for x in xs], tmp_path / "trace")
    assert [o["where"].tolist() for o in outputs] == [[np.nonzero(np.maximum(x, 0))[0].tolist()] for x in xs]
    trace = tracespec.load_trace(tmp_path / "trace")
    nodes, records = _records(trace)
    recorded = {
        row["step"]: trace.read(0, row["array"])
        for row in records
        if nodes[row["node"]]["route"] == "NonZero" and row["role"] == "output"
    }
    assert {step: value.tolist() for step, value in recorded.items()} == {
        step: [np.nonzero(np.maximum(x, 0))[0].tolist()] for step, x in enumerate(xs)
    }


def _unscoped_graph() -> onnx.ModelProto:
    """x @ w + b -> Relu -> Log: no node names, no metadata; Log of zeros gives -inf."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"]),
        helper.make_node("Add", ["h", "b"], ["z"]),
        helper.make_node("Relu", ["z"], ["r"]),
        helper.make_node("Log", ["r"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "unscoped",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 5])],
        [
            numpy_helper.from_array(rng.standard_normal((4, 5)).astype(np.float32), "w"),
            numpy_helper.from_array(rng.standard_normal(5).astype(np.float32), "b"),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_children_of_called_sequentials_get_their_named_modules_routes(tmp_path: Path) -> None:
    # The TorchScript exporter names them by their qualified name inside the container:
    # /stages/stages.1/body/body.0/Conv is stages.1.body.0 (as in torchvision's ResNet layers).
    class Stage(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU())

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.body(x)

    model = nn.Sequential()
    model.add_module("stages", nn.Sequential(Stage(), Stage()))
    x = torch.randn(1, 4, 6, 6)
    onnx_file = tmp_path / "model.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation notes from the exporter itself
        torch.onnx.export(model.eval(), (x,), str(onnx_file), dynamo=False, input_names=["x"])
    tracespec.record_onnx(onnx_file, {"x": x.numpy()}, tmp_path / "trace")
    nodes, _ = _records(tracespec.load_trace(tmp_path / "trace"))
    modules = {row["route"] for row in nodes.values() if row["kind"] != "op"}
    assert {"stages", "stages.0", "stages.0.body", "stages.0.body.0", "stages.1.body.1"} <= modules
    assert modules <= {route for route, _ in model.named_modules()}


def test_graph_without_scopes_records_ops_under_the_root(tmp_path: Path) -> None:
    model = _unscoped_graph()
    x = np.random.default_rng(1).standard_normal((3, 4)).astype(np.float32)
    tracespec.record_onnx(model, {"x": x}, tmp_path / "full", capture="full")
    tracespec.record_onnx(model, {"x": x}, tmp_path / "stats", capture="stats")
    trace = tracespec.load_trace(tmp_path / "full")
    nodes, records = _records(trace)
    ops = [row for row in nodes.values() if row["kind"] == "op"]
    assert [row["route"] for row in ops] == ["MatMul", "Add", "Relu", "Log"]
    assert all(nodes[row["parent"]]["route"] == "" for row in ops)
    w = numpy_helper.to_array(model.graph.initializer[0])
    b = numpy_helper.to_array(model.graph.initializer[1])
    relu = np.maximum(x @ w + b, 0)
    np.testing.assert_allclose(_tensor(trace, nodes, records, "Relu", "output", "0"), relu, rtol=1e-6)
    np.testing.assert_array_equal(_tensor(trace, nodes, records, "", "parameter", "w"), w)

    # Zeros through Log are -inf: the in-graph moments are not finite, the reference counts them.
    log_stats = next(
        r
        for r in tracespec.load_trace(tmp_path / "stats").tensors().to_pylist()
        if nodes[r["node"]]["route"] == "Log" and r["role"] == "output"
    )
    log_output = _tensor(trace, nodes, records, "Log", "output", "0")
    assert log_output is not None
    expected = compute_stats(log_output)
    assert expected.inf_count > 0
    assert (log_stats["inf_count"], log_stats["max"]) == (expected.inf_count, pytest.approx(expected.max))

    # The next step fetches that value whole in the main run: same statistics.
    recorder = OnnxRecorder(model, capture="stats")
    recorder.record([{"x": x}, {"x": x}], tmp_path / "steps")
    rows = [
        r
        for r in tracespec.load_trace(tmp_path / "steps").tensors().to_pylist()
        if nodes[r["node"]]["route"] == "Log" and r["role"] == "output"
    ]
    assert [(r["step"], r["inf_count"], r["mean"]) for r in rows] == [
        (0, log_stats["inf_count"], log_stats["mean"]),
        (1, log_stats["inf_count"], log_stats["mean"]),
    ]


def test_model_with_external_data_records_from_its_path(tmp_path: Path) -> None:
    model = _unscoped_graph()
    w = numpy_helper.to_array(model.graph.initializer[0])
    folder = tmp_path / "model"
    folder.mkdir()
    onnx.save(model, str(folder / "m.onnx"), save_as_external_data=True, location="m.data", size_threshold=0)
    assert (folder / "m.data").stat().st_size > 0
    x = np.ones((3, 4), np.float32)
    (outputs,) = tracespec.record_onnx(folder / "m.onnx", {"x": x}, tmp_path / "trace", capture="full")
    trace = tracespec.load_trace(tmp_path / "trace")
    nodes, records = _records(trace)
    np.testing.assert_array_equal(_tensor(trace, nodes, records, "", "parameter", "w"), w)
    np.testing.assert_allclose(outputs["y"], _tensor(trace, nodes, records, "Log", "output", "0"))


def test_external_data_outside_the_model_folder_is_refused(tmp_path: Path) -> None:
    model = _unscoped_graph()
    onnx.save(model, str(tmp_path / "m.onnx"), save_as_external_data=True, location="m.data", size_threshold=0)
    (tmp_path / "sub").mkdir()
    proto = onnx.load(str(tmp_path / "m.onnx"), load_external_data=False)
    for tensor in proto.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../m.data"
    onnx.save(proto, str(tmp_path / "sub" / "m.onnx"))
    with pytest.raises(InputFileError, match="outside the model's folder"):
        tracespec.record_onnx(tmp_path / "sub" / "m.onnx", {"x": np.ones((3, 4), np.float32)}, tmp_path / "trace")


def test_bad_inputs_are_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "garbage.onnx").write_bytes(b"\x00not a model\xff" * 10)
    with pytest.raises(InputFileError, match="not a readable ONNX model"):
        tracespec.record_onnx(tmp_path / "garbage.onnx", {}, tmp_path / "t1")
    with pytest.raises(UsageError, match="expects"):
        tracespec.record_onnx(_unscoped_graph(), {"wrong": np.ones(1)}, tmp_path / "t2")
    with pytest.raises(UsageError, match="capture"):
        tracespec.record_onnx(_unscoped_graph(), {"x": np.ones((3, 4), np.float32)}, tmp_path / "t3", capture="everything")


def test_tracespec_record_picks_this_adapter_for_an_onnx_model(exported: dict[str, Any], tmp_path: Path) -> None:
    feeds = [{"ids": exported["ids"].numpy()}, {"ids": exported["ids"].numpy()[:, ::-1].copy()}]
    with tracespec.record(exported["dynamo"], tmp_path / "trace", capture="hash", include="blocks.1.*") as trace:
        outputs = [trace.run(feed) for feed in feeds]
    loaded = tracespec.load_trace(tmp_path / "trace")
    assert loaded.complete and loaded.steps == [0, 1]
    assert loaded.manifest.framework == "onnxruntime"
    rows = loaded.tensors().to_pylist()
    first = {(r["node"], r["role"], r["slot"]): r["hash"] for r in rows if r["step"] == 0}
    second = {(r["node"], r["role"], r["slot"]): r["hash"] for r in rows if r["step"] == 1}
    assert first.keys() == second.keys() and first != second
    assert not np.allclose(*(next(iter(out.values())) for out in outputs))


def test_import_tracespec_does_not_import_onnxruntime() -> None:
    code = "import sys, tracespec; print(sorted({'onnx', 'onnxruntime', 'torch'} & set(sys.modules)))"
    assert subprocess.check_output([sys.executable, "-c", code], text=True).strip() == "[]"


def test_an_option_the_graph_recorder_does_not_take_is_a_usage_error(tmp_path: Path) -> None:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(tracespec.errors.UsageError, match="unknown option 'roles'.* Options: providers, capture"):
        tracespec.record_onnx(model, {"x": np.ones(2, np.float32)}, tmp_path / "t", roles=["output"])
    with pytest.raises(tracespec.errors.UsageError, match="did you mean 'capture'"):
        tracespec.record(model, tmp_path / "t2", captur="full")
