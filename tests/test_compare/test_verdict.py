"""The verdict: JSON Schema, determinism, round trip, and a core free of frameworks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import tracespec
from test_compare.synthetic_nets import Knobs, record_linear_chain, record_tiny_net
from tracespec.compare import Verdict, validate_verdict
from tracespec.compare.verdict import VerdictInvalidError


@pytest.fixture(scope="module")
def traces(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("v")
    return record_tiny_net(root / "a"), record_tiny_net(root / "b", Knobs(bug_gelu="tanh", names=("norm", "fc1", "fc2")))


@pytest.mark.parametrize("mode", ["strict", "mean", "stats", "bitwise"])
def test_verdicts_validate_against_the_schema(traces: tuple[Path, Path], mode: str) -> None:
    verdict = tracespec.compare(*traces, mode=mode)
    validate_verdict(json.loads(verdict.dumps()))


def test_passing_and_backward_verdicts_validate(traces: tuple[Path, Path], tmp_path: Path) -> None:
    validate_verdict(json.loads(tracespec.compare(traces[0], traces[0]).dumps()))
    chain = tracespec.compare(record_linear_chain(tmp_path / "a"), record_linear_chain(tmp_path / "b", wrong_backward_at=1))
    validate_verdict(json.loads(chain.dumps()))


def test_the_verdict_has_the_required_fields(traces: tuple[Path, Path]) -> None:
    doc = json.loads(tracespec.compare(*traces).dumps())
    assert doc["status"] == "fail" and doc["verdict_version"] == "1.3"
    first = doc["first_divergence"]
    assert {"stage", "step", "rank", "kind", "metrics", "a", "b"} <= set(first)
    assert first["a"]["route"] == "blocks.1.act" and first["b"]["route"] == "blocks.1.act"
    assert doc["coverage"]["ranks"]["0"]["matched"] == doc["coverage"]["ranks"]["0"]["nodes_a"]
    assert all({"status", "metrics"} <= set(n) for n in doc["nodes"])
    assert isinstance(doc["unmatched"], list)


def test_the_json_is_deterministic(traces: tuple[Path, Path]) -> None:
    assert tracespec.compare(*traces).dumps() == tracespec.compare(*traces).dumps()


def test_round_trip(traces: tuple[Path, Path]) -> None:
    verdict = tracespec.compare(*traces)
    again = Verdict.from_json(json.loads(verdict.dumps()))
    assert again.dumps() == verdict.dumps() and not again.passed


def test_an_invalid_verdict_is_rejected(traces: tuple[Path, Path]) -> None:
    doc = json.loads(tracespec.compare(*traces).dumps())
    doc["status"] = "maybe"
    with pytest.raises(VerdictInvalidError, match="status"):
        validate_verdict(doc)


def test_comparing_never_imports_a_framework(traces: tuple[Path, Path]) -> None:
    code = (
        "import sys, tracespec, tracespec.compare, tracespec.cli; "
        f"tracespec.compare({str(traces[0])!r}, {str(traces[1])!r}); "
        "print(sorted({'torch', 'paddle', 'onnxruntime'} & set(sys.modules)))"
    )
    assert subprocess.check_output([sys.executable, "-c", code], text=True).strip() == "[]"


def test_progress_reaches_the_bytes_to_compare(traces: tuple[Path, Path]) -> None:
    seen: list[tuple[int, int]] = []
    tracespec.compare(*traces, trust_hashes=False, progress=lambda done, total: seen.append((done, total)))
    assert seen and seen[-1][0] == seen[-1][1] > 0
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)


def test_a_cycle_in_the_module_tree_is_invalid_input(tmp_path: Path) -> None:
    import pyarrow as pa

    from tracespec import TraceWriter
    from tracespec.errors import TableInvalidError

    with TraceWriter(tmp_path / "loop", framework="numpy", durable=False) as w:
        w.add_node("", "Net")
        w.add_node("x", "Net", parent=0)
    # The writer refuses a forward parent, so the cycle is made by rewriting the nodes table.
    segment = tmp_path / "loop" / "rank_0" / "tables" / "nodes-000000.arrow"
    nodes = pa.ipc.open_file(pa.BufferReader(segment.read_bytes())).read_all()
    nodes = nodes.set_column(1, nodes.schema.field("parent"), pa.array([1, 0], pa.int32()))
    with pa.OSFile(str(segment), "wb") as sink, pa.ipc.new_file(sink, nodes.schema) as out:
        out.write_table(nodes)
    with pytest.raises(TableInvalidError, match="cycle"):
        tracespec.compare(tmp_path / "loop", tmp_path / "loop")


def test_from_1_1_a_first_divergence_carries_metrics_or_a_mismatch(traces: tuple[Path, Path]) -> None:
    doc = json.loads(tracespec.compare(*traces).dumps())
    doc["first_divergence"]["metrics"] = None
    with pytest.raises(VerdictInvalidError, match="first_divergence"):
        validate_verdict(doc)
    doc["first_divergence"]["mismatch"] = {
        "kind": "shape",
        "shape": {"a": [2, 3], "b": [2, 4]},
        "dtype": {"a": "float32", "b": "float32"},
    }
    validate_verdict(doc)


def test_a_1_0_verdict_still_validates_and_reads(traces: tuple[Path, Path]) -> None:
    doc = json.loads(tracespec.compare(*traces).dumps())
    doc["verdict_version"] = "1.0"
    del doc["benign"]
    del doc["first_divergence"]["mismatch"]
    doc["first_divergence"]["metrics"] = None  # 1.0 allowed a first divergence without numbers
    for node in doc["nodes"]:
        for record in node["records"]:
            record.pop("noise", None)
    validate_verdict(doc)
    assert Verdict.from_json(doc).benign == []
