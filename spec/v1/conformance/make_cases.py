"""Generate the conformance cases of spec v1: small valid traces and invalid ones.

Each case is a folder ``<name>/`` with ``case.json`` and the trace in ``trace/``:

    {"name": ..., "description": ..., "valid": true, "complete": true|false}
    {"name": ..., "description": ..., "valid": true, "complete": false, "partial_steps": [...], "ending": "signal"}
    {"name": ..., "description": ..., "error": "<reason code>"}

A valid case must pass ``tracespec validate --deep``; an invalid one must be rejected with exactly
that reason code. The generated folders are committed and are golden: once a version of the spec
is released its cases are never edited. This script only creates cases that do not exist yet;
``--force`` rebuilds all of them (only before a release).

Run from the repository root: ``python spec/v1/conformance/make_cases.py``.
"""

from __future__ import annotations

import argparse
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pyarrow as pa

from tracespec import TraceWriter
from tracespec.format.manifest import Ending

HERE = Path(__file__).resolve().parent
FIXED_TIME = "2026-01-01T00:00:00.000000Z"
PRODUCER_VERSION = "0.1.0"

Mutation = Callable[[Path], None]
CASES: dict[str, tuple[str, dict[str, Any], Callable[[Path], None]]] = {}


def case(name: str, description: str, **expect: Any) -> Callable[[Callable[[Path], None]], Callable[[Path], None]]:
    """Register a case: ``build(folder)`` writes the trace into ``folder``."""

    def register(build: Callable[[Path], None]) -> Callable[[Path], None]:
        CASES[name] = (description, expect, build)
        return build

    return register


# ----------------------------------------------------------------------------- building blocks
def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())  # type: ignore[no-any-return]


def write_json(path: Path, doc: Any) -> None:
    path.write_text(json.dumps(doc, indent=1))


def edit_json(path: Path, change: Callable[[dict[str, Any]], None]) -> None:
    doc = read_json(path)
    change(doc)
    write_json(path, doc)


def freeze_times(folder: Path) -> None:
    """Replace the timestamps and producer version so that regenerating gives the same bytes."""
    manifest = folder / "manifest.json"
    if manifest.exists():
        doc = read_json(manifest)
        doc["created"] = FIXED_TIME
        doc["producer"]["version"] = PRODUCER_VERSION
        write_json(manifest, doc)
    for part in folder.glob("rank_*/part.json"):
        edit_json(part, lambda d: d.update(updated=FIXED_TIME))


def segment(folder: Path, table: str, rank: int = 0) -> Path:
    """The (first) Arrow segment of ``table`` in ``rank``'s part."""
    part = read_json(folder / f"rank_{rank}" / "part.json")
    return folder / f"rank_{rank}" / part["tables"][table][0]["path"]


def edit_table(path: Path, change: Callable[[pa.Table], pa.Table]) -> None:
    with pa.memory_map(str(path)) as source:
        table = pa.ipc.open_file(source).read_all()
    table = change(table)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, table.schema) as out:
        out.write_table(table)
    path.write_bytes(sink.getvalue().to_pybytes())


def set_column(table: pa.Table, name: str, values: list[Any], type_: pa.DataType | None = None) -> pa.Table:
    index = table.schema.get_field_index(name)
    field = table.schema.field(name)
    return table.set_column(index, pa.field(name, type_ or field.type, field.nullable), pa.array(values, type_ or field.type))


def first_array(folder: Path) -> Path:
    """The folder of the first stored array of rank 0."""
    return folder / "rank_0" / "tensors.zarr" / "step_0" / "0"


def write_small(folder: Path, **options: Any) -> None:
    """A two-node trace: one float32[5, 3] output (array 'step_0/0' in chunks of 2 rows: c/0/0,
    c/1/0 and the padded edge c/2/0) and a statistics-only parameter."""
    with TraceWriter(folder, framework="numpy", framework_version="2.x", chunk_limit=24, **options) as w:
        root = w.add_node("", "Model")
        fc = w.add_node("fc", "Linear", parent=root, position=0)
        w.add_tensor(
            step=0,
            stage="forward",
            node=fc,
            call=0,
            role="output",
            slot="0",
            array=np.arange(15, dtype=np.float32).reshape(5, 3) / 7,
        )
        w.add_tensor(
            step=0, stage="forward", node=fc, role="parameter", slot="weight", array=np.eye(3, dtype=np.float32), level="stats"
        )
        w.add_call(step=0, stage="forward", node=root, call=0, begin=0, end=2)
        w.add_call(step=0, stage="forward", node=fc, call=0, begin=1, end=1)
        w.end_step(0)


def small_then(mutate: Mutation) -> Callable[[Path], None]:
    def build(folder: Path) -> None:
        write_small(folder)
        freeze_times(folder)
        mutate(folder)

    return build


# ----------------------------------------------------------------------------- valid cases
@case("valid-minimal", "One node and nothing else: the smallest complete trace.", valid=True, complete=True)
def _minimal(folder: Path) -> None:
    with TraceWriter(folder, framework="numpy") as w:
        w.add_node("", "Model")


@case("valid-small", "Two nodes, two calls, one full and one statistics-only record.", valid=True, complete=True)
def _small(folder: Path) -> None:
    write_small(folder)


@case(
    "valid-every-dtype",
    "One array per spec dtype (bfloat16 and float8 as uint bits), 0-d, empty, non-contiguous and "
    "chunked arrays, NaN payloads, the three levels, a value record and a deduplicated record.",
    valid=True,
    complete=True,
)
def _every_dtype(folder: Path) -> None:
    from tracespec.format.dtypes import DTYPES

    rng = np.random.default_rng(2026)
    with TraceWriter(folder, framework="numpy", chunk_limit=64) as w:
        node = w.add_node("", "Model")
        for i, (name, dt) in enumerate(sorted(DTYPES.items())):
            bits = rng.integers(0, 256, size=5 * 4 * dt.itemsize, dtype=np.uint8)
            if name == "bool":
                bits &= 1
            w.add_tensor(
                step=0, stage="forward", node=node, call=i, role="output", slot="0", array=bits.view(dt.numpy).reshape(5, 4)
            )
        nan_payload = np.array([0x7FC00001, 0xFFC12345, 0x80000000], dtype=np.uint32).view(np.float32)
        w.add_tensor(step=0, stage="forward", node=node, call=100, role="output", slot="nan", array=nan_payload)
        w.add_tensor(
            step=0, stage="forward", node=node, call=100, role="output", slot="scalar", array=np.array(ml_dtypes.bfloat16(-2.5))
        )
        w.add_tensor(
            step=0, stage="forward", node=node, call=100, role="output", slot="empty", array=np.zeros((0, 7), np.float16)
        )
        strided = np.arange(60, dtype=np.int16).reshape(6, 10)[::2, ::3]
        kept = w.add_tensor(step=0, stage="forward", node=node, call=100, role="output", slot="strided", array=strided)
        w.add_tensor(step=0, stage="forward", node=node, call=101, role="input", slot="0", same_as=kept)
        w.add_tensor(step=0, stage="forward", node=node, call=100, role="output", slot="stats", array=strided, level="stats")
        w.add_tensor(step=0, stage="forward", node=node, call=100, role="output", slot="hash", array=strided, level="hash")
        w.add_value(step=0, stage="forward", node=node, call=100, role="output", slot="n", value=3)


@case(
    "valid-op-nodes",
    "Ops recorded inside a module (section 6.1): op nodes under the module whose forward calls them, "
    "routes <module>.<name>#<k>, attrs op and source, calls nested in the module's call.",
    valid=True,
    complete=True,
)
def _op_nodes(folder: Path) -> None:
    x = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)
    with TraceWriter(folder, framework="torch", framework_version="2.x") as w:
        root = w.add_node("", "Model")
        attn = w.add_node("attn", "Attention", parent=root, position=0)
        fc = w.add_node("attn.fc", "Linear", parent=attn, position=0)
        ops = {}
        for position, (name, op, line) in enumerate(
            [
                ("matmul", "torch.Tensor.__matmul__", 40),
                ("mul", "torch.Tensor.__mul__", 40),
                ("softmax", "torch.nn.functional.softmax", 41),
            ],
            start=1,
        ):
            ops[name] = w.add_node(
                f"attn.{name}#0",
                name,
                parent=attn,
                kind="op",
                position=position,
                attrs={"op": op, "source": {"file": "/src/model.py", "line": line, "function": "forward"}},
            )
        w.add_tensor(step=0, stage="forward", node=fc, call=0, role="output", slot="0", array=x)
        scores = x @ x.T
        w.add_tensor(step=0, stage="forward", node=ops["matmul"], call=0, role="output", slot="0", array=scores)
        w.add_tensor(step=0, stage="forward", node=ops["mul"], call=0, role="output", slot="0", array=scores * 0.5)
        w.add_tensor(step=0, stage="forward", node=ops["softmax"], call=0, role="output", slot="0", array=np.exp(scores * 0.5))
        w.add_call(step=0, stage="forward", node=fc, call=0, begin=2, end=3)
        for i, name in enumerate(("matmul", "mul", "softmax")):
            w.add_call(step=0, stage="forward", node=ops[name], call=0, begin=4 + 2 * i, end=5 + 2 * i)
        w.add_call(step=0, stage="forward", node=attn, call=0, begin=1, end=10)
        w.add_call(step=0, stage="forward", node=root, call=0, begin=0, end=11)
        w.end_step(0)


@case(
    "valid-odd-folder-names",
    "Folders named like parts but not parts (rank_03, rank_x, rank_1.tmp, each with a part.json): "
    "a reader lists the trace folder and ignores them.",
    valid=True,
    complete=True,
)
def _odd_folder_names(folder: Path) -> None:
    write_small(folder)
    for name in ("rank_03", "rank_x", "rank_1.tmp"):
        (folder / name).mkdir()
        (folder / name / "part.json").write_text('{"format": "not a part"}')


@case("valid-two-ranks", "Two ranks over two steps, each rank in its own part.", valid=True, complete=True)
def _two_ranks(folder: Path) -> None:
    for rank in (0, 1):
        with TraceWriter(folder, framework="numpy", rank=rank, world_size=2, device=f"cpu:{rank}") as w:
            node = w.add_node("", "Model")
            for step in (0, 1):
                w.add_tensor(
                    step=step,
                    stage="forward",
                    node=node,
                    call=0,
                    role="output",
                    slot="0",
                    array=np.full((2, 2), rank * 10 + step, np.int32),
                )
                w.add_tensor(
                    step=step,
                    stage="backward",
                    node=node,
                    call=0,
                    role="grad_output",
                    slot="0",
                    array=np.full((2, 2), 0.5, np.float64),
                )
                w.add_tensor(
                    step=step, stage="update", node=node, role="optimizer_state", slot="w.exp_avg", array=np.zeros(2, np.float32)
                )
                w.end_step(step)


@case("valid-zstd", "Arrays compressed with the zstd codec.", valid=True, complete=True)
def _zstd(folder: Path) -> None:
    write_small(folder, compression="zstd")


@case(
    "valid-incomplete",
    "A writer that died: part.json says complete false, rank 1 of 2 never wrote, and a temporary "
    "file of an interrupted write lies around. Valid, and incomplete.",
    valid=True,
    complete=False,
)
def _incomplete(folder: Path) -> None:
    write_small(folder)
    edit_json(folder / "manifest.json", lambda d: d.update(world_size=2))
    edit_json(folder / "rank_0" / "part.json", lambda d: d.update(complete=False))
    (folder / "rank_0" / "tables" / ".tensors-000001.arrow.tmp-4242-1").write_bytes(b"ARROW1\x00\x00half")
    (folder / "rank_1").mkdir()
    (folder / "rank_1" / ".part.json.tmp-4243-1").write_bytes(b'{"format": "tracesp')


@case(
    "valid-future-minor",
    "format_version 1.9 with a manifest field and a table column this reader does not know: "
    "minors only add, so a 1.x reader reads it.",
    valid=True,
    complete=True,
)
def _future_minor(folder: Path) -> None:
    write_small(folder)
    edit_json(folder / "manifest.json", lambda d: d.update(format_version="1.9", new_field={"x": 1}))
    edit_json(folder / "rank_0" / "part.json", lambda d: d.update(format_version="1.9"))
    edit_table(segment(folder, "tensors"), lambda t: t.append_column("future", pa.array(["a"] * len(t))))


@case(
    "valid-foreign-chunking",
    "An array written by zarr-python itself, chunked along its last axis (chunks of 2 x 2, edge "
    "chunks padded): readers accept any regular chunk grid.",
    valid=True,
    complete=True,
)
def _foreign_chunking(folder: Path) -> None:
    import zarr

    write_small(folder)
    store = folder / "rank_0" / "tensors.zarr"
    shutil.rmtree(first_array(folder))
    data = np.arange(15, dtype=np.float32).reshape(5, 3) / 7
    array = zarr.create_array(
        store=str(store),
        name="step_0/0",
        shape=data.shape,
        chunks=(2, 2),
        dtype="float32",
        fill_value=0.0,
        compressors=None,
        attributes={"tracespec": {"dtype": "float32"}},
    )
    array[...] = data


def write_interrupted(folder: Path, ending: Ending | None) -> None:
    """Step 0 ended; step 1 has its forward output published (a flush) and never ends: the
    writer stops with ``ending``, or (None) the way SIGKILL leaves it."""
    w = TraceWriter(folder, framework="numpy", framework_version="2.x")
    root = w.add_node("", "Model")
    for step in (0, 1):
        w.add_tensor(
            step=step, stage="forward", node=root, call=0, role="output", slot="0", array=np.full((2, 2), step, dtype=np.float32)
        )
        w.add_call(step=step, stage="forward", node=root, call=0, begin=0, end=1)
        if step == 0:
            w.end_step(0)
    w.flush()
    w.abort(ending)


@case(
    "valid-ended-by-signal",
    "The process got SIGTERM in step 1: step 0 is whole, step 1 is published as far as it got, "
    "listed in partial_steps, and ending says signal SIGTERM at step 1. Valid, and incomplete.",
    valid=True,
    complete=False,
    partial_steps=[1],
    ending="signal",
)
def _ended_by_signal(folder: Path) -> None:
    write_interrupted(folder, Ending("signal", "SIGTERM", 1))


@case(
    "valid-killed-mid-step",
    "The process was killed (SIGKILL) in step 1 after a flush: ending is null, partial_steps names "
    "step 1, step 0 is whole. Valid, and incomplete.",
    valid=True,
    complete=False,
    partial_steps=[1],
    ending=None,
)
def _killed_mid_step(folder: Path) -> None:
    write_interrupted(folder, None)


# ----------------------------------------------------------------------------- invalid cases
def invalid(name: str, description: str, error: str) -> Callable[[Mutation], Mutation]:
    def register(mutate: Mutation) -> Mutation:
        CASES[name] = (description, {"error": error}, small_then(mutate))
        return mutate

    return register


@invalid("manifest-missing", "The folder has parts but no manifest.json.", "not_a_trace")
def _manifest_missing(folder: Path) -> None:
    (folder / "manifest.json").unlink()


@invalid("manifest-truncated", "manifest.json cut off in the middle.", "manifest_unreadable")
def _manifest_truncated(folder: Path) -> None:
    path = folder / "manifest.json"
    path.write_bytes(path.read_bytes()[:40])


@invalid("manifest-garbled", "manifest.json is binary garbage.", "manifest_unreadable")
def _manifest_garbled(folder: Path) -> None:
    (folder / "manifest.json").write_bytes(bytes(range(256)) * 4)


@invalid("manifest-unknown-major", "format_version 2.0: a 1.x reader must refuse it.", "unsupported_major_version")
def _manifest_major(folder: Path) -> None:
    edit_json(folder / "manifest.json", lambda d: d.update(format_version="2.0"))


@invalid("manifest-schema", "world_size is a string: the manifest breaks its JSON Schema.", "manifest_invalid")
def _manifest_schema(folder: Path) -> None:
    edit_json(folder / "manifest.json", lambda d: d.update(world_size="two"))


@invalid("part-truncated", "rank_0/part.json cut off in the middle.", "manifest_unreadable")
def _part_truncated(folder: Path) -> None:
    path = folder / "rank_0" / "part.json"
    path.write_bytes(path.read_bytes()[:50])


@invalid("part-unknown-major", "rank_0/part.json has format_version 3.1.", "unsupported_major_version")
def _part_major(folder: Path) -> None:
    edit_json(folder / "rank_0" / "part.json", lambda d: d.update(format_version="3.1"))


@invalid("part-wrong-rank", "rank_0/part.json says it is rank 1.", "table_mismatch")
def _part_rank(folder: Path) -> None:
    edit_json(folder / "rank_0" / "part.json", lambda d: d.update(rank=1))


@invalid("part-beyond-world-size", "A rank_3/ part in a trace of world_size 1.", "table_mismatch")
def _part_beyond(folder: Path) -> None:
    shutil.copytree(folder / "rank_0", folder / "rank_3")
    edit_json(folder / "rank_3" / "part.json", lambda d: d.update(rank=3))


@invalid("partial-step-not-listed", "part.json's partial_steps names step 5, which steps lacks.", "table_mismatch")
def _partial_not_listed(folder: Path) -> None:
    edit_json(folder / "rank_0" / "part.json", lambda d: d.update(partial_steps=[5]))


@invalid("partial-step-in-complete-part", "A part that says complete true lists step 0 as partial.", "table_mismatch")
def _partial_in_complete(folder: Path) -> None:
    edit_json(folder / "rank_0" / "part.json", lambda d: d.update(partial_steps=[0]))


@invalid("ending-unknown", "part.json's ending says how 'exploded', not closed, exception or signal.", "manifest_invalid")
def _ending_unknown(folder: Path) -> None:
    edit_json(folder / "rank_0" / "part.json", lambda d: d.update(ending={"how": "exploded"}))


@invalid("segment-row-count", "part.json says the tensors segment has 5 rows; it has 2.", "table_mismatch")
def _row_count(folder: Path) -> None:
    edit_json(folder / "rank_0" / "part.json", lambda d: d["tables"]["tensors"][0].update(rows=5))


@invalid("segment-missing", "A tensors segment listed in part.json is not there.", "table_mismatch")
def _segment_missing(folder: Path) -> None:
    segment(folder, "tensors").unlink()


@invalid("segment-garbled", "A tensors segment is not an Arrow IPC file.", "table_invalid")
def _segment_garbled(folder: Path) -> None:
    segment(folder, "tensors").write_bytes(b"PAR1 this is not arrow")


@invalid("segment-path-escape", "A segment path in part.json climbs out of the trace folder.", "path_escape")
def _segment_escape(folder: Path) -> None:
    edit_json(folder / "rank_0" / "part.json", lambda d: d["tables"]["nodes"][0].update(path="../../../../etc/passwd"))


@invalid("store-path-escape", "The store path in part.json is absolute.", "path_escape")
def _store_escape(folder: Path) -> None:
    edit_json(folder / "rank_0" / "part.json", lambda d: d["store"].update(path="/tmp"))


@invalid(
    "symlink-escape",
    "An array folder is a symbolic link to an array of another trace: the path is plain, but it leads outside the trace folder.",
    "path_escape",
)
def _symlink_escape(folder: Path) -> None:
    shutil.rmtree(first_array(folder))
    first_array(folder).symlink_to(Path("../../../../../valid-small/trace/rank_0/tensors.zarr/step_0/0"))


@invalid("array-path-escape", "A tensor record's array path climbs out of the store.", "path_escape")
def _array_escape(folder: Path) -> None:
    edit_table(segment(folder, "tensors"), lambda t: set_column(t, "array", ["../../../manifest.json", None]))


@invalid("column-wrong-type", "tensors.step is a string column instead of int64.", "table_invalid")
def _column_type(folder: Path) -> None:
    edit_table(segment(folder, "tensors"), lambda t: set_column(t, "step", ["0", "0"], pa.string()))


@invalid("column-missing", "The tensors table has no 'hash' column.", "table_invalid")
def _column_missing(folder: Path) -> None:
    edit_table(segment(folder, "tensors"), lambda t: t.drop_columns(["hash"]))


@invalid("column-unknown-role", "A record's role is 'weights', not one of the spec's roles.", "table_invalid")
def _unknown_role(folder: Path) -> None:
    edit_table(segment(folder, "tensors"), lambda t: set_column(t, "role", ["output", "weights"]))


@invalid("unknown-node", "A tensor record names node 99, which the nodes table lacks.", "table_mismatch")
def _unknown_node(folder: Path) -> None:
    edit_table(segment(folder, "tensors"), lambda t: set_column(t, "node", [1, 99]))


@invalid("node-parent-after-child", "Node 0's parent is node 1: parents must come first.", "table_invalid")
def _parent_after(folder: Path) -> None:
    edit_table(segment(folder, "nodes"), lambda t: set_column(t, "parent", [1, 0]))


@invalid("step-not-listed", "The tables hold step 0 but part.json lists no steps.", "table_mismatch")
def _step_not_listed(folder: Path) -> None:
    edit_json(folder / "rank_0" / "part.json", lambda d: d.update(steps=[]))


@invalid("full-without-array", "A record of level 'full' names no array.", "table_invalid")
def _full_without_array(folder: Path) -> None:
    edit_table(segment(folder, "tensors"), lambda t: set_column(t, "array", [None, None]))


@invalid("stats-missing", "A record of level 'stats' has no nan_count.", "table_invalid")
def _stats_missing(folder: Path) -> None:
    edit_table(segment(folder, "tensors"), lambda t: set_column(t, "nan_count", [0, None]))


@invalid("hash-missing", "A record of level 'full' has no hash.", "table_invalid")
def _hash_missing(folder: Path) -> None:
    edit_table(segment(folder, "tensors"), lambda t: set_column(t, "hash", [None, None]))


@invalid("unknown-dtype", "A tensor record's dtype is 'float128'.", "unsupported_dtype")
def _unknown_dtype(folder: Path) -> None:
    edit_table(segment(folder, "tensors"), lambda t: set_column(t, "dtype", ["float128", "float32"]))


@invalid("negative-extent", "A tensor record's shape is [-4, 3].", "invalid_shape")
def _negative_extent(folder: Path) -> None:
    edit_table(segment(folder, "tensors"), lambda t: set_column(t, "shape", [[-4, 3], [3, 3]]))


@invalid(
    "shape-null-extent", "The statistics-only record's shape is [3, null]: an extent is null inside the list.", "table_invalid"
)
def _null_extent(folder: Path) -> None:
    edit_table(segment(folder, "tensors"), lambda t: set_column(t, "shape", [[5, 3], [3, None]]))


@invalid("absurd-shape-record", "A record claims shape [2^31, 2^31, 2^31]: no reader may allocate it.", "invalid_shape")
def _absurd_record(folder: Path) -> None:
    edit_table(segment(folder, "tensors"), lambda t: set_column(t, "shape", [[2**31] * 3, [3, 3]]))


@invalid("absurd-shape-array", "An array's zarr.json claims shape [2^40, 2^40].", "invalid_shape")
def _absurd_array(folder: Path) -> None:
    edit_json(first_array(folder) / "zarr.json", lambda d: d.update(shape=[2**40, 2**40]))


@invalid("absurd-chunk-count", "A 2^22 x 2^10 array cut into single-element chunks.", "invalid_shape")
def _absurd_chunks(folder: Path) -> None:
    def change(doc: dict[str, Any]) -> None:
        doc.update(shape=[2**22, 2**10])
        doc["chunk_grid"]["configuration"]["chunk_shape"] = [1, 1]

    edit_json(first_array(folder) / "zarr.json", change)


@invalid("array-missing", "The array a record names has no zarr.json.", "array_missing")
def _array_missing(folder: Path) -> None:
    shutil.rmtree(first_array(folder))


@invalid("array-shape-disagrees", "The record says [4, 3]; the array's zarr.json says [3, 4].", "table_mismatch")
def _array_disagrees(folder: Path) -> None:
    edit_json(first_array(folder) / "zarr.json", lambda d: d.update(shape=[3, 4]))


@invalid("array-unknown-codec", "An array is compressed with gzip, which v1 does not list.", "array_invalid")
def _array_codec(folder: Path) -> None:
    edit_json(first_array(folder) / "zarr.json", lambda d: d["codecs"].append({"name": "gzip", "configuration": {"level": 1}}))


@invalid("array-big-endian", "An array's bytes codec says big endian; v1 arrays are little endian.", "array_invalid")
def _array_big_endian(folder: Path) -> None:
    edit_json(first_array(folder) / "zarr.json", lambda d: d["codecs"][0]["configuration"].update(endian="big"))


@invalid("array-wrong-storage-type", "attributes.tracespec.dtype is bfloat16 but data_type is float32.", "array_invalid")
def _array_storage(folder: Path) -> None:
    edit_json(first_array(folder) / "zarr.json", lambda d: d["attributes"]["tracespec"].update(dtype="bfloat16"))


@invalid("chunk-missing", "One of the three chunks of an array was never written.", "chunk_missing")
def _chunk_missing(folder: Path) -> None:
    (first_array(folder) / "c" / "1" / "0").unlink()


@invalid("chunk-truncated", "The padded edge chunk of an array is cut short.", "chunk_missing")
def _chunk_truncated(folder: Path) -> None:
    path = first_array(folder) / "c" / "2" / "0"
    path.write_bytes(path.read_bytes()[:5])


@invalid("data-hash-mismatch", "A chunk's bytes changed after writing: the content hash disagrees.", "data_mismatch")
def _hash_mismatch(folder: Path) -> None:
    path = first_array(folder) / "c" / "0" / "0"
    data = bytearray(path.read_bytes())
    data[0] ^= 0xFF
    path.write_bytes(bytes(data))


# ----------------------------------------------------------------------------- main
def build_case(name: str, force: bool) -> bool:
    description, expect, build = CASES[name]
    folder = HERE / name
    if folder.exists() and not force:
        return False
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    build(folder / "trace")
    if expect.get("valid"):
        freeze_times(folder / "trace")
    write_json(folder / "case.json", {"name": name, "description": description, **expect})
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="rebuild existing cases (never after a release)")
    parser.add_argument("names", nargs="*", help="cases to build (default: all)")
    args = parser.parse_args()
    for name in args.names or sorted(CASES):
        print(("built   " if build_case(name, args.force) else "exists  ") + name)


if __name__ == "__main__":
    main()
