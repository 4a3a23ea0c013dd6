"""TraceWriter behaviour: capture levels, deduplication, value records, ranks, usage errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tracespec import TraceWriter, load_trace, validate_trace
from tracespec.errors import DataMismatchError, UsageError
from tracespec.format.stats import compute_stats, content_hash


def one_node_writer(path: Path, **options: object) -> tuple[TraceWriter, int]:
    writer = TraceWriter(path, framework="numpy", **options)  # type: ignore[arg-type]
    return writer, writer.add_node("", "Model")


def test_levels_keep_what_they_promise(tmp_path: Path) -> None:
    x = np.linspace(-1, 1, 50, dtype=np.float32)
    w, node = one_node_writer(tmp_path / "t")
    with w:
        for level in ("full", "stats", "hash"):
            w.add_tensor(step=0, stage="forward", node=node, call=0, role="output", slot=level, array=x, level=level)
    rows = {r["slot"]: r for r in load_trace(tmp_path / "t").tensors().to_pylist()}
    stats = compute_stats(x)
    assert rows["full"]["array"] is not None and rows["full"]["hash"] == content_hash(x)
    assert rows["full"]["std"] == stats.std
    assert rows["stats"]["array"] is None and rows["stats"]["hash"] is None and rows["stats"]["std"] == stats.std
    assert rows["hash"]["array"] is None and rows["hash"]["std"] is None and rows["hash"]["hash"] == content_hash(x)
    assert all(r["dtype"] == "float32" and r["shape"] == [50] for r in rows.values())


def test_precomputed_stats_and_hash_need_no_array(tmp_path: Path) -> None:
    x = np.arange(6, dtype=np.int32)
    w, node = one_node_writer(tmp_path / "t")
    with w:
        w.add_tensor(
            step=0,
            stage="forward",
            node=node,
            role="parameter",
            slot="weight",
            level="stats",
            stats=compute_stats(x),
            dtype="int32",
            shape=(6,),
        )
        w.add_tensor(
            step=0,
            stage="forward",
            node=node,
            role="buffer",
            slot="b",
            level="hash",
            hash=content_hash(x),
            dtype="int32",
            shape=(6,),
        )
    rows = load_trace(tmp_path / "t").tensors().to_pylist()
    assert rows[0]["mean"] == 2.5 and rows[1]["hash"] == content_hash(x)


def test_same_as_shares_the_array_and_writes_nothing_twice(tmp_path: Path) -> None:
    x = np.ones((4, 4), np.float32)
    w, node = one_node_writer(tmp_path / "t")
    with w:
        first = w.add_tensor(step=0, stage="forward", node=node, call=0, role="output", slot="0", array=x)
        second = w.add_tensor(step=0, stage="forward", node=node, call=1, role="input", slot="0", same_as=first)
        with pytest.raises(UsageError, match="float32"):
            w.add_tensor(step=0, stage="forward", node=node, call=1, role="input", slot="1", array=np.ones(3), same_as=first)
        w.end_step(0)
        with pytest.raises(UsageError, match="same_as"):  # dedup stays inside one step
            w.add_tensor(step=1, stage="forward", node=node, call=0, role="input", slot="0", same_as=first)
    trace = load_trace(tmp_path / "t")
    rows = {r["id"]: r for r in trace.tensors().to_pylist()}
    assert rows[second]["array"] == rows[first]["array"]
    assert rows[second]["hash"] == rows[first]["hash"] and rows[second]["level"] == "full"
    assert trace.parts[0].manifest.store_arrays == 1


@pytest.mark.parametrize("level", ["full", "stats", "hash"])
def test_copies_take_what_the_writer_computes_for_the_record_they_repeat(tmp_path: Path, level: str) -> None:
    """Statistics and hashes are filled in when rows are published, after the data: a copy (and
    a copy of a copy, published later) must still carry them."""
    x = np.random.default_rng(3).standard_normal((512, 1024)).astype(np.float32)
    w, node = one_node_writer(tmp_path / "t")
    with w:
        first = w.add_tensor(step=0, stage="forward", node=node, call=0, role="output", slot="0", array=x, level=level)
        copy = w.add_tensor(step=0, stage="forward", node=node, call=1, role="input", slot="0", same_as=first)
        w.flush()
        copy_of_copy = w.add_tensor(step=0, stage="forward", node=node, call=2, role="input", slot="0", same_as=copy)
    rows = {r["id"]: r for r in load_trace(tmp_path / "t").tensors().to_pylist()}
    expected = compute_stats(x)
    columns = ("hash", "array", "min", "max", "mean", "std", "l2", "nan_count", "inf_count")
    for record in (first, copy, copy_of_copy):
        assert [rows[record][c] for c in columns] == [rows[first][c] for c in columns], record
    if level != "hash":
        assert (rows[copy_of_copy]["mean"], rows[copy_of_copy]["l2"]) == (expected.mean, expected.l2)
    assert (rows[copy_of_copy]["hash"] is not None) == (level != "stats")
    assert (rows[copy_of_copy]["array"] is not None) == (level == "full")


def test_values_are_recorded_not_dropped(tmp_path: Path) -> None:
    w, node = one_node_writer(tmp_path / "t")
    with w:
        w.add_value(step=0, stage="forward", node=node, call=0, role="output", slot="1", value=None)
        w.add_value(step=0, stage="forward", node=node, call=0, role="input", slot="k", value="x" * 500)
    rows = load_trace(tmp_path / "t").tensors().to_pylist()
    assert [(r["value_type"], r["dtype"], r["array"]) for r in rows] == [("NoneType", None, None), ("str", None, None)]
    assert len(rows[1]["value"]) == 200 and rows[1]["value"].endswith("...")


def test_ranks_write_their_own_parts_and_never_clobber(tmp_path: Path) -> None:
    writers = [TraceWriter(tmp_path / "t", framework="numpy", rank=r, world_size=2, device=f"cpu:{r}") for r in (0, 1)]
    for rank, w in enumerate(writers):
        node = w.add_node("", "Model")
        w.add_tensor(step=0, stage="forward", node=node, call=0, role="output", slot="0", array=np.full(3, rank))
    assert not load_trace(tmp_path / "t").complete  # both still open
    for w in writers:
        w.close()
    trace = load_trace(tmp_path / "t")
    assert trace.complete and trace.ranks == [0, 1]
    assert [trace.read(r, trace.parts[r].tensors["array"][0].as_py())[0] for r in (0, 1)] == [0, 1]
    with pytest.raises(UsageError, match="already exists"):
        TraceWriter(tmp_path / "t", framework="numpy", rank=1, world_size=2)
    with pytest.raises(UsageError, match="started by 'torch'"):
        TraceWriter(tmp_path / "t2", framework="torch", rank=0, world_size=2).close()
        TraceWriter(tmp_path / "t2", framework="paddle", rank=1, world_size=2)


def test_a_missing_rank_makes_the_trace_incomplete(tmp_path: Path) -> None:
    TraceWriter(tmp_path / "t", framework="numpy", rank=1, world_size=3).close()
    trace = load_trace(tmp_path / "t")
    assert not trace.complete and trace.missing_ranks() == [0, 2]


def test_overwrite_replaces_a_part(tmp_path: Path) -> None:
    for value in (1.0, 2.0):
        w, node = one_node_writer(tmp_path / "t", overwrite=True)
        with w:
            w.add_tensor(step=0, stage="forward", node=node, call=0, role="output", slot="0", array=np.full(2, value))
    (row,) = load_trace(tmp_path / "t").tensors().to_pylist()
    assert row["max"] == 2.0


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (dict(stage="sideways"), "stage"),
        (dict(role="weight"), "role"),
        (dict(level="most"), "level"),
        (dict(node=7), "node 7"),
        (dict(step=-1), "count from 0"),
        (dict(array=None), "needs an array"),
        (dict(array=None, dtype="float32", shape=(2,)), "needs the array"),
        (dict(array=np.array(["a"])), "no tracespec dtype"),
        (dict(array=None, dtype="float128", shape=(2,), level="stats"), "unknown dtype"),
        (dict(array=None, dtype="float32", shape=(-2,), level="hash"), "negative"),
    ],
)
def test_bad_calls_are_usage_errors(tmp_path: Path, call: dict[str, object], match: str) -> None:
    w, node = one_node_writer(tmp_path / "t")
    arguments: dict[str, object] = dict(
        step=0, stage="forward", node=node, call=0, role="output", slot="0", array=np.zeros(2, np.float32)
    )
    with w, pytest.raises((UsageError, ValueError), match=match):
        w.add_tensor(**{**arguments, **call})  # type: ignore[arg-type]


def test_parent_must_be_added_first(tmp_path: Path) -> None:
    w, node = one_node_writer(tmp_path / "t")
    with w, pytest.raises(UsageError, match="parent"):
        w.add_node("a", "Linear", parent=node + 5)


def test_an_exception_in_the_with_block_leaves_an_incomplete_trace_with_what_was_recorded(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="boom"):
        w, node = one_node_writer(tmp_path / "t")
        with w:
            w.add_tensor(step=0, stage="forward", node=node, call=0, role="output", slot="0", array=np.ones(3))
            raise RuntimeError("boom")
    trace = load_trace(tmp_path / "t")
    assert not trace.complete and len(trace.tensors()) == 1


def test_deep_validation_catches_flipped_bits(tmp_path: Path) -> None:
    w, node = one_node_writer(tmp_path / "t")
    with w:
        w.add_tensor(step=0, stage="forward", node=node, call=0, role="output", slot="0", array=np.zeros(8, np.float32))
    validate_trace(tmp_path / "t", deep=True)
    chunk = tmp_path / "t" / "rank_0" / "tensors.zarr" / "step_0" / "0" / "c" / "0"
    chunk.write_bytes(b"\x01" + chunk.read_bytes()[1:])
    validate_trace(tmp_path / "t")  # sizes and names still fine
    with pytest.raises(DataMismatchError):
        validate_trace(tmp_path / "t", deep=True)


def test_manifest_records_what_the_writer_was_told(tmp_path: Path) -> None:
    with TraceWriter(
        tmp_path / "t",
        framework="torch",
        framework_version="2.13.0",
        device="cuda:0",
        capture={"level": "full"},
        metadata={"git": "abc"},
        dtype_policy="bf16-mixed",
    ):
        pass
    doc = json.loads((tmp_path / "t" / "manifest.json").read_text())
    assert doc["framework"] == {"name": "torch", "version": "2.13.0"}
    assert doc["capture"] == {"level": "full"} and doc["metadata"] == {"git": "abc"}
    assert doc["dtype_policy"] == "bf16-mixed" and doc["format_version"] == "1.1"
    assert load_trace(tmp_path / "t").parts[0].manifest.device == "cuda:0"


def test_a_writer_killed_before_its_first_part_json_leaves_a_readable_trace(tmp_path: Path) -> None:
    TraceWriter(tmp_path / "t", framework="numpy", world_size=2).close()
    (tmp_path / "t" / "rank_1" / "tables").mkdir(parents=True)  # rank 1 died right after mkdir
    trace = load_trace(tmp_path / "t")
    assert trace.ranks == [0] and not trace.complete and trace.missing_ranks() == [1]
    (tmp_path / "t" / "rank_0" / "part.json").unlink()
    trace = load_trace(tmp_path / "t")
    assert trace.ranks == [] and len(trace.tensors()) == 0 and not trace.complete
