"""Read a trace (spec sections "Layout", "Parts", "Tables", "Tensor store").

Constraints:
- Opening a trace reads the manifests and the tables (metadata, small), checks them against each
  other, and reads no tensor data. Tensors are read one at a time, on request.
- Every path taken from a file is checked before use; nothing outside the trace folder is opened.
- Unknown columns are ignored (minor versions only add); missing or mistyped columns are errors.
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tracespec.errors import (
    InvalidShapeError,
    ManifestUnreadableError,
    NotATraceError,
    TableInvalidError,
    TableMismatchError,
)
from tracespec.format.dtypes import parse_dtype
from tracespec.format.manifest import (
    MANIFEST_FILE,
    PART_FILE,
    Manifest,
    PartManifest,
    parse_manifest,
    parse_part_manifest,
)
from tracespec.format.tables import LEVELS, NODE_KINDS, ROLES, STAGES, TABLE_NAMES, TABLE_SCHEMAS
from tracespec.storage.zarr_store import (
    MAX_ARRAY_BYTES,
    ArrayMeta,
    Confinement,
    check_inside,
    check_relative_path,
    read_array,
    read_array_meta,
)

__all__ = ["Part", "Trace", "load_trace"]

_PART_DIR: Final = re.compile(r"^rank_(0|[1-9][0-9]*)$")
_ENUMS: Final = {
    "nodes": {"kind": NODE_KINDS},
    "calls": {"stage": STAGES},
    "tensors": {"stage": STAGES, "role": ROLES, "level": LEVELS},
}


def _read_bytes(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise NotATraceError(f"{path}: no {what} here; is this a tracespec trace folder?") from None
    except OSError as exc:
        raise ManifestUnreadableError(f"{path}: cannot read {what} ({exc.strerror})") from None


@dataclass(frozen=True)
class Part:
    """One rank's part: its manifest and its three tables."""

    rank: int
    folder: Path
    manifest: PartManifest
    nodes: pa.Table
    calls: pa.Table
    tensors: pa.Table

    @property
    def store(self) -> Path:
        return self.folder / self.manifest.store_path

    @cached_property
    def _confined_store(self) -> Confinement:
        return Confinement(self.store)

    def array_meta(self, name: str) -> ArrayMeta:
        return read_array_meta(self._confined_store, name)

    def read_array(self, name: str) -> np.ndarray:
        """The tensor stored as array ``name``, with its true dtype."""
        return read_array(self._confined_store, self.array_meta(name))


def _load_table(part_dir: Path, table: str, manifest: PartManifest) -> pa.Table:
    schema = TABLE_SCHEMAS[table]
    pieces = []
    for segment in manifest.tables[table]:
        where = f"{part_dir.name}/{segment.path}"
        check_relative_path(segment.path, where)
        path = check_inside(part_dir / segment.path, part_dir, where)
        try:
            with pa.memory_map(str(path)) as source:
                got = pa.ipc.open_file(source).read_all()
        except FileNotFoundError:
            raise TableMismatchError(f"{where}: listed in part.json but missing") from None
        except (pa.ArrowInvalid, OSError) as exc:
            raise TableInvalidError(f"{where}: not a readable Arrow IPC file ({exc})") from None
        if got.num_rows != segment.rows:
            raise TableMismatchError(
                f"{where}: holds {got.num_rows} rows, part.json says {segment.rows}"
            )
        for field in schema:
            if field.name not in got.column_names:
                raise TableInvalidError(f"{where}: column {field.name!r} is missing")
            found = got.schema.field(field.name).type
            if found != field.type:
                raise TableInvalidError(
                    f"{where}: column {field.name!r} has type {found}, expected {field.type}"
                )
            if not field.nullable and got.column(field.name).null_count:
                raise TableInvalidError(f"{where}: column {field.name!r} has nulls")
        pieces.append(got.select(schema.names))
    result = pa.concat_tables(pieces) if pieces else schema.empty_table()
    for column, allowed in _ENUMS[table].items():
        values = set(pc.unique(result.column(column)).to_pylist()) - {None}
        unknown = values - set(allowed)
        if unknown:
            raise TableInvalidError(
                f"{part_dir.name}: {table}.{column} has unknown values {sorted(unknown)}; "
                f"allowed: {list(allowed)}"
            )
    return result


def _check_references(part_dir: Path, manifest: PartManifest, nodes: pa.Table, calls: pa.Table, tensors: pa.Table) -> None:
    where = part_dir.name
    ids = nodes.column("node").to_numpy()
    if len(np.unique(ids)) != len(ids):
        raise TableInvalidError(f"{where}: nodes.node has duplicate ids")
    record_ids = tensors.column("id").to_numpy()
    if len(np.unique(record_ids)) != len(record_ids):
        raise TableInvalidError(f"{where}: tensors.id has duplicate ids")
    for table, name in ((calls, "calls"), (tensors, "tensors")):
        unlisted = set(pc.unique(table.column("step")).to_pylist()) - set(manifest.steps)
        if unlisted:
            raise TableMismatchError(
                f"{where}: {name} has step {min(unlisted)}, which part.json's steps {list(manifest.steps)} lack"
            )
    known = pa.array(ids, pa.int32())
    for table, name in ((calls, "calls"), (tensors, "tensors")):
        unknown = pc.filter(table.column("node"), pc.invert(pc.is_in(table.column("node"), value_set=known)))
        if len(unknown):
            raise TableMismatchError(
                f"{where}: {name} names node {unknown[0].as_py()}, which is not in the nodes table"
            )
    parents = pc.drop_null(nodes.column("parent"))
    orphans = pc.filter(parents, pc.invert(pc.is_in(parents, value_set=known)))
    if len(orphans):
        raise TableMismatchError(f"{where}: a node's parent {orphans[0].as_py()} is not in the nodes table")
    late = pc.filter(nodes, pc.greater_equal(nodes.column("parent"), nodes.column("node")))
    if len(late):
        raise TableInvalidError(
            f"{where}: node {late.column('node')[0].as_py()} has parent {late.column('parent')[0].as_py()}; "
            "a parent's id must be smaller than its children's (pre-order), so the tree has no cycle"
        )
    columns = ["id", "dtype", "shape", "level", "value_type", "array", "nan_count", "inf_count", "hash"]
    for row in tensors.select(columns).to_pylist():
        _check_record_kind(where, row)
        if row["dtype"] is not None:
            parse_dtype(row["dtype"])
        shape = row["shape"]
        if shape is not None:
            if any(d < 0 for d in shape):
                raise InvalidShapeError(f"{where}: tensor {row['id']} has a negative extent in shape {shape}")
            if math.prod(shape) * parse_dtype(row["dtype"]).itemsize > MAX_ARRAY_BYTES:
                raise InvalidShapeError(f"{where}: tensor {row['id']} has an absurd shape {shape}")
        if row["array"] is not None:
            check_relative_path(row["array"], f"{where}: tensor {row['id']} array")


def _check_record_kind(where: str, row: dict[str, Any]) -> None:
    """A row is a tensor record (dtype, shape, level set) or a value record (value_type set)."""
    tensor_columns = (row["dtype"], row["shape"], row["level"])
    if row["value_type"] is None:
        if None in tensor_columns:
            raise TableInvalidError(
                f"{where}: tensor {row['id']} lacks one of dtype, shape, level (and is not a value record)"
            )
        if (row["level"] == "full") != (row["array"] is not None):
            raise TableInvalidError(
                f"{where}: tensor {row['id']} has level {row['level']!r} and array {row['array']!r}; "
                "exactly the records of level 'full' name an array"
            )
        if row["level"] in ("full", "stats") and (row["nan_count"] is None or row["inf_count"] is None):
            raise TableInvalidError(f"{where}: tensor {row['id']} of level {row['level']!r} lacks its statistics")
        if row["level"] in ("full", "hash") and row["hash"] is None:
            raise TableInvalidError(f"{where}: tensor {row['id']} of level {row['level']!r} lacks its hash")
    elif any(c is not None for c in tensor_columns) or row["array"] is not None:
        raise TableInvalidError(f"{where}: record {row['id']} is a value record but has tensor columns set")


def _load_part(folder: Path) -> Part:
    part_file = check_inside(folder / PART_FILE, folder, f"{folder.name}/{PART_FILE}")
    manifest = parse_part_manifest(_read_bytes(part_file, PART_FILE), f"{folder.name}/{PART_FILE}")
    expected = f"rank_{manifest.rank}"
    if folder.name != expected:
        raise TableMismatchError(f"{folder.name}/{PART_FILE}: says rank {manifest.rank}, folder is {folder.name}")
    unlisted = set(manifest.partial_steps) - set(manifest.steps)
    if unlisted:
        raise TableMismatchError(
            f"{folder.name}/{PART_FILE}: partial_steps names step {min(unlisted)}, which steps {list(manifest.steps)} lack"
        )
    if manifest.complete and manifest.partial_steps:
        raise TableMismatchError(
            f"{folder.name}/{PART_FILE}: complete is true but partial_steps is {list(manifest.partial_steps)}; "
            "a complete part has every step whole"
        )
    check_relative_path(manifest.store_path, f"{folder.name}/{PART_FILE}: store.path")
    check_inside(folder / manifest.store_path, folder, f"{folder.name}/{PART_FILE}: store.path")
    tables = {name: _load_table(folder, name, manifest) for name in TABLE_NAMES}
    _check_references(folder, manifest, tables["nodes"], tables["calls"], tables["tensors"])
    return Part(manifest.rank, folder, manifest, tables["nodes"], tables["calls"], tables["tensors"])


class Trace:
    """A trace opened for reading. Tables are in memory; tensor data is read on request."""

    def __init__(self, path: Path, manifest: Manifest, parts: dict[int, Part]) -> None:
        self.path = path
        self.manifest = manifest
        self.parts = parts

    @property
    def ranks(self) -> list[int]:
        return sorted(self.parts)

    @property
    def steps(self) -> list[int]:
        return sorted({s for part in self.parts.values() for s in part.manifest.steps})

    @property
    def complete(self) -> bool:
        """Every rank of ``world_size`` wrote its part and closed it."""
        return len(self.parts) == self.manifest.world_size and all(
            p.manifest.complete for p in self.parts.values()
        )

    @property
    def partial_steps(self) -> list[int]:
        """Steps some rank started and did not end before it stopped writing (spec section 11):
        their records may be incomplete. Every other step of :attr:`steps` is whole."""
        return sorted({s for part in self.parts.values() for s in part.manifest.partial_steps})

    def how_ended(self) -> str:
        """How the writers of an incomplete trace ended, in words (spec section 11)."""
        if self.complete:
            return "complete: every writer closed"
        said = []
        for rank in self.ranks:
            part = self.parts[rank].manifest
            ending = part.ending
            if ending is None:
                how = "did not end: killed, or still writing"
            elif ending.how == "closed":
                continue
            else:
                how = f"ended by {ending.how} {ending.detail or ''}".rstrip() + (f" at step {ending.step}" if ending.step is not None else "")
            partial = f", partial steps {list(part.partial_steps)}" if part.partial_steps else ""
            said.append(f"rank {rank} {how}{partial}")
        return "; ".join(said) or "ranks are missing"

    def missing_ranks(self) -> list[int]:
        return sorted(set(range(self.manifest.world_size)) - set(self.parts))

    def _concat(self, table: str) -> pa.Table:
        pieces = [TABLE_SCHEMAS[table].empty_table().append_column("rank", pa.array([], pa.int32()))]
        for rank in self.ranks:
            got = getattr(self.parts[rank], table)
            pieces.append(got.append_column("rank", pa.array([rank] * got.num_rows, pa.int32())))
        return pa.concat_tables(pieces)

    def nodes(self) -> pa.Table:
        """The module-tree nodes of every rank, with a ``rank`` column."""
        return self._concat("nodes")

    def calls(self) -> pa.Table:
        return self._concat("calls")

    def tensors(self) -> pa.Table:
        return self._concat("tensors")

    def records(self, *, step: int | None = None, stage: str | None = None, role: str | None = None,
                route: str | None = None) -> pa.Table:
        """The tensor records of every rank with each one's node (``route``, ``class_name``,
        ``kind``), those of the given step, stage, role and route glob only: a table to filter
        further, or to hand to pandas (``trace.records(role="output").to_pandas()``)."""
        table = self.tensors()
        for column, value in (("step", step), ("stage", stage), ("role", role)):
            if value is not None:
                table = table.filter(pc.equal(table[column], value))
        # Arrow's hash join takes no list columns (shape): the node of each record by lookup
        nodes = {(n["rank"], n["node"]): n for n in self.nodes().select(["rank", "node", "route", "class_name", "kind"]).to_pylist()}
        found = [nodes.get(key, {}) for key in zip(table["rank"].to_pylist(), table["node"].to_pylist(), strict=True)]
        for column in ("route", "class_name", "kind"):
            table = table.append_column(column, pa.array([n.get(column) for n in found], pa.string()))
        if route is not None:
            routes = table["route"].to_pylist()
            table = table.filter(pa.array([r is not None and fnmatch.fnmatchcase(r, route) for r in routes], pa.bool_()))
        return table.sort_by([("rank", "ascending"), ("id", "ascending")])

    def _repr_html_(self) -> str:
        # Jupyter's display: the report layer draws it (storage only dispatches to it)
        from tracespec.report.notebook import trace_fragment

        return trace_fragment(self)

    def read(self, rank: int, array: str) -> np.ndarray:
        """The tensor stored as ``array`` in ``rank``'s store."""
        return self.parts[rank].read_array(array)

    def iter_arrays(self, records: Iterable[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], np.ndarray]]:
        """Yield ``(record, array)`` one at a time for records that kept data (``array`` set)."""
        for record in records:
            if record.get("array") is not None:
                yield record, self.read(record.get("rank", 0), record["array"])

    def __repr__(self) -> str:
        state = "complete" if self.complete else "incomplete"
        return f"<Trace {self.path} {self.manifest.framework} ranks={self.ranks} steps={self.steps} {state}>"


def load_trace(path: str | Path) -> Trace:
    """Open the trace folder ``path``: manifests and tables are read and checked, data is not."""
    root = Path(path)
    if not root.is_dir():
        raise NotATraceError(f"{root}: not a folder; a trace is a folder with {MANIFEST_FILE}")
    manifest_file = check_inside(root / MANIFEST_FILE, root, f"{root.name}/{MANIFEST_FILE}")
    manifest = parse_manifest(_read_bytes(manifest_file, MANIFEST_FILE), f"{root.name}/{MANIFEST_FILE}")
    parts: dict[int, Part] = {}
    for child in sorted(root.iterdir()):
        # A part folder without part.json belongs to a writer that died before its first
        # write: that rank is missing (the trace is incomplete), not corrupt.
        if child.is_dir() and _PART_DIR.match(child.name) and (child / PART_FILE).exists():
            part = _load_part(check_inside(child, root, child.name))
            parts[part.rank] = part
    beyond = [r for r in parts if r >= manifest.world_size]
    if beyond:
        raise TableMismatchError(f"{root}: part rank_{beyond[0]} is outside world_size {manifest.world_size}")
    return Trace(root, manifest, parts)
