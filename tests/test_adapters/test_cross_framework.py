"""One transformer block, written in PyTorch and in Paddle with the same weights, recorded by each
adapter: the two traces line up. Checked with numpy only, independent of any diff engine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import paddle
import pytest
import torch
from test_paddle import build as build_paddle  # the suite's models, one module per framework
from test_torch import build as build_torch

import tracespec
from tracespec.testing.adapter_tests import SPECS, AdapterTests, TraceView, tree_shape

SPEC = SPECS["block"]
# float32 noise: the two frameworks run different kernels (matmul blocking, softmax, GELU).
RTOL, ATOL = 1e-5, 1e-5


def run_torch(path: Path, x: np.ndarray, probe: np.ndarray) -> None:
    model = build_torch(SPEC).eval()
    inputs = torch.tensor(x, requires_grad=True)
    with tracespec.record(model, path, capture="full") as rec:
        (model(inputs) * torch.from_numpy(probe)).sum().backward()
        rec.step()


def run_paddle(path: Path, x: np.ndarray, probe: np.ndarray) -> None:
    model = build_paddle(SPEC)
    model.eval()
    inputs = paddle.to_tensor(x, stop_gradient=False)
    with tracespec.record(model, path, capture="full") as rec:
        (model(inputs) * paddle.to_tensor(probe)).sum().backward()
        rec.step()


@pytest.fixture(scope="module")
def traces(tmp_path_factory: pytest.TempPathFactory) -> tuple[TraceView, TraceView]:
    root = tmp_path_factory.mktemp("cross")
    x = np.random.default_rng(0).standard_normal((2, 5, 8)).astype(np.float32)
    probe = AdapterTests.probe(x.shape)
    run_torch(root / "torch", x, probe)
    run_paddle(root / "paddle", x, probe)
    return TraceView(root / "torch"), TraceView(root / "paddle")


def keyed(view: TraceView) -> dict[tuple[Any, ...], dict[str, Any]]:
    """Tensor records by what identifies them in any framework: stage, route, role, slot, call."""
    out = {}
    for r in view.tensors:
        key = (r["stage"], view.route_of[r["node"]], r["role"], r["slot"], r["call"])
        assert key not in out, f"two records for {key}"
        out[key] = r
    return out


def in_torch_layout(view: TraceView, record: dict[str, Any]) -> np.ndarray:
    """A Paddle record's array, with the Linear weight layout rule applied ([in, out] -> [out, in])."""
    array = view.array(record)
    node = next(n for n in view.nodes if n["node"] == record["node"])
    if node["class_name"] == "Linear" and record["slot"] == "weight":
        return array.T
    return array


def test_frameworks_are_what_they_say(traces: tuple[TraceView, TraceView]) -> None:
    torch_view, paddle_view = traces
    assert torch_view.trace.manifest.framework == "torch"
    assert paddle_view.trace.manifest.framework == "paddle"


def test_the_two_trees_have_the_same_shape(traces: tuple[TraceView, TraceView]) -> None:
    torch_view, paddle_view = traces
    torch_tree = tree_shape(torch_view.trace.path)
    assert torch_tree == tree_shape(paddle_view.trace.path)
    assert [(route, cls, parent) for route, cls, parent, _ in torch_tree] == list(SPEC.tree)


def test_the_same_calls_in_the_same_forward_order(traces: tuple[TraceView, TraceView]) -> None:
    def calls(view: TraceView, stage: str) -> list[tuple[str, int, int, int]]:
        rows = [(view.route_of[c["node"]], c["call"], c["begin"], c["end"]) for c in view.calls if c["stage"] == stage]
        return sorted(rows, key=lambda row: row[2])

    torch_view, paddle_view = traces
    assert calls(torch_view, "forward") == calls(paddle_view, "forward")
    torch_backward = calls(torch_view, "backward")
    paddle_backward = calls(paddle_view, "backward")
    assert {c[:2] for c in torch_backward} == {c[:2] for c in paddle_backward}
    # Leaves of the tree complete their backward in the same order in both frameworks.
    leaves = {route for route, cls, _ in SPEC.tree if not any(parent == route for _, _, parent in SPEC.tree)}
    by_end = lambda rows: [c[0] for c in sorted(rows, key=lambda c: c[3]) if c[0] in leaves]  # noqa: E731
    assert by_end(torch_backward) == by_end(paddle_backward)


def test_every_tensor_agrees_within_float32_noise(traces: tuple[TraceView, TraceView]) -> None:
    torch_view, paddle_view = traces
    torch_records, paddle_records = keyed(torch_view), keyed(paddle_view)
    assert torch_records.keys() == paddle_records.keys()
    roles = {key[2] for key in torch_records}
    assert roles == {"input", "output", "parameter", "grad_output", "grad_input", "parameter_grad"}
    for key, t_record in torch_records.items():
        p_record = paddle_records[key]
        expected = torch_view.array(t_record)
        got = in_torch_layout(paddle_view, p_record)
        assert got.dtype == expected.dtype == np.float32, key
        assert got.shape == expected.shape, key
        np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL, err_msg=str(key))


def test_native_layouts_are_kept(traces: tuple[TraceView, TraceView]) -> None:
    torch_view, paddle_view = traces
    key = ("forward", "attn.qkv", "parameter", "weight", None)
    assert keyed(torch_view)[key]["shape"] == [24, 8], "PyTorch Linear.weight is [out, in]"
    assert keyed(paddle_view)[key]["shape"] == [8, 24], "Paddle Linear.weight is [in, out]"
    np.testing.assert_array_equal(paddle_view.array(keyed(paddle_view)[key]), SPEC.weights["attn.qkv.weight"])


def test_model_inputs_are_bit_identical(traces: tuple[TraceView, TraceView]) -> None:
    torch_view, paddle_view = traces
    key = ("forward", "", "input", "0", 0)
    assert keyed(torch_view)[key]["hash"] == keyed(paddle_view)[key]["hash"]
