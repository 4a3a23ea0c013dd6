"""Read a trace (spec sections "Layout", "Parts", "Tables", "Tensor store").

Constraints:
- Opening a trace reads the manifests and the tables (metadata, small), checks them against each
  other, and reads no tensor data. Tensors are read one at a time, on request.
- Every path taken from a file is checked before use; nothing outside the trace folder is opened.
- A trace at a URL is fetched into a local cache folder (``tracespec.storage.remote``) and read
  from there by the same code, so it is checked exactly as a local one; its tensor data is
  fetched an array at a time, when read.
- Unknown columns are ignored (minor versions only add); missing or mistyped columns are errors.
"""

from __future__ import annotations

import bisect
import ctypes
import dataclasses
import fnmatch
import math
import mmap
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
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
    TracespecError,
)
from tracespec.format.dtypes import parse_dtype
from tracespec.format.limits import MAX_ARRAY_BYTES
from tracespec.format.manifest import (
    MANIFEST_FILE,
    PART_FILE,
    Manifest,
    PartManifest,
    parse_manifest,
    parse_part_manifest,
)
from tracespec.format.tables import LEVELS, NODE_KINDS, ROLES, STAGES, TABLE_NAMES, TABLE_SCHEMAS
from tracespec.storage.location import RemoteLocation, default_cache, resolve_location
from tracespec.storage.remote import PART_DIR, RemoteArrays, TraceCache, fetch_trace
from tracespec.storage.zarr_store import (
    ArrayMeta,
    Confinement,
    check_inside,
    check_relative_path,
    chunk_key_path,
    chunks_of_range,
    missing_chunks,
    read_array,
    read_array_meta,
    read_range,
)

__all__ = ["Part", "Trace", "load_trace"]

_PART_DIR: Final = PART_DIR
_ENUMS: Final[dict[str, dict[str, tuple[str, ...]]]] = {
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
    maps: dict[str, Mapped] = dataclasses.field(default_factory=dict, repr=False)
    """Each table's files, mapped: the tables' columns live there."""
    remote: RemoteArrays | None = dataclasses.field(default=None, repr=False)
    """For a part at a URL, where its arrays are fetched from (``folder`` is then the cache)."""

    def release_pages(self) -> None:
        """Let the kernel drop the table pages read so far from this process's memory (they stay in
        the page cache, and are read back on the next access): a long run's tables are read a batch
        of steps at a time, and memory stays that of a batch, whatever their size."""
        for mapped in self.maps.values():
            mapped.release()

    def slices(self, name: str, start: int = 0, stop: int | None = None) -> Iterator[pa.Table]:
        """Rows ``start`` to ``stop`` of table ``name`` in slices of a million rows, each slice's
        pages released after use: a pass over a whole column of a long run takes the memory of a
        slice (the kernel maps a small file's neighbouring pages with each one read, so one column
        costs them all)."""
        table: pa.Table = getattr(self, name)
        stop = table.num_rows if stop is None else stop
        return _slices(table.slice(start, stop - start), self.maps.get(name), start)

    @property
    def store(self) -> Path:
        return self.folder / self.manifest.store_path

    @cached_property
    def _confined_store(self) -> Confinement:
        return Confinement(self.store)

    def array_meta(self, name: str) -> ArrayMeta:
        if self.remote is not None:
            self.remote.fetch_meta(name)
        return read_array_meta(self._confined_store, name)

    def missing_chunks(self, meta: ArrayMeta) -> list[str]:
        """The chunks of ``meta`` that are absent or of the wrong size (no data is read)."""
        if self.remote is not None:
            return self.remote.missing_chunks(meta)
        return missing_chunks(self.store, meta)

    def read_array(self, name: str) -> np.ndarray:
        """The tensor stored as array ``name``, with its true dtype."""
        with self.local_array(name) as meta:
            return self.read_fetched(meta)

    def read_range(self, name: str, start: int, stop: int) -> np.ndarray:
        """Elements ``start`` to ``stop`` (flat, C order) of the tensor stored as array ``name``, as
        a 1-d array of its true dtype: only the chunks that hold them are read (and fetched, for a
        remote part), so memory is the range's and a chunk's whatever the tensor's size."""
        with self.local_array(name, (start, stop)) as meta:
            return read_range(self._confined_store, meta, start, stop)

    def read_fetched(self, meta: ArrayMeta) -> np.ndarray:
        """The data of ``meta`` from the local folder (within :meth:`local_array`)."""
        return read_array(self._confined_store, meta)

    @contextmanager
    def local_array(self, name: str, elements: tuple[int, int] | None = None) -> Iterator[ArrayMeta]:
        """The metadata of array ``name``; within the block its files (those holding ``elements``,
        a flat range, if given) are in the local folder ``store / name`` (fetched, for a remote
        part, and dropped after unless cached)."""
        meta = self.array_meta(name)
        if self.remote is None:
            yield meta
        else:
            with self.remote.fetched(meta, chunks_of_range(meta, *elements) if elements is not None else None):
                yield meta

    def stored_sizes(self, meta: ArrayMeta) -> dict[str, int]:
        """The size of each file of array ``meta`` that the store holds (``zarr.json``,
        ``c/0/0``...), without reading them."""
        if self.remote is not None:
            return self.remote.stored_sizes(meta)
        sizes = {}
        for relative in ("zarr.json", *map(chunk_key_path, meta.chunk_keys())):
            try:
                sizes[relative] = (self.store / meta.name / relative).stat().st_size
            except FileNotFoundError:
                continue
        return sizes

    def stored_files(self) -> dict[str, int]:
        """Every file (object) under the part's folder, relative to it, with its size; symbolic
        links are not followed."""
        if self.remote is not None:
            return self.remote.location.sizes(self.folder.name)
        found = {}
        for folder, _, names in os.walk(self.folder):
            for name in names:
                path = Path(folder) / name
                found[path.relative_to(self.folder).as_posix()] = path.lstat().st_size
        return found

    def group_metadata(self, group: str) -> bytes | None:
        """The ``zarr.json`` of group ``group`` of the store (``""``: its root), if there is one."""
        relative = f"{group}/zarr.json" if group else "zarr.json"
        check_relative_path(relative, f"{self.folder.name}: group {group!r}")
        if self.remote is not None:
            return self.remote.read(relative)
        try:
            return self._confined_store.check(self.store / relative, relative).read_bytes()
        except FileNotFoundError:
            return None


_NOT_NULL: Final = {name: [f.name for f in schema if not f.nullable] for name, schema in TABLE_SCHEMAS.items()}


def _madvise() -> Callable[[int, int, int], int] | None:
    """libc's ``madvise``, where there is one (Linux, macOS; elsewhere pages are never released)."""
    if not hasattr(mmap, "MADV_DONTNEED"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    function.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    function.restype = ctypes.c_int
    madvise: Callable[[int, int, int], int] = function
    return madvise


_MADVISE: Final = _madvise()


class Mapped:
    """The mapped files of one table, in row order: which rows each holds, to release their pages."""

    def __init__(self) -> None:
        self.buffers: list[pa.Buffer] = []
        self.starts: list[int] = [0]

    def add(self, path: Path) -> pa.Table:
        """Map the Arrow IPC file at ``path`` (zero-copy; no file descriptor stays open: a long run
        has tens of thousands) and return its table, whose rows follow the files added before."""
        with pa.memory_map(str(path)) as source:
            buffer = source.read_buffer()
        table = pa.ipc.open_file(pa.BufferReader(buffer)).read_all()
        self.buffers.append(buffer)
        self.starts.append(self.starts[-1] + table.num_rows)
        _release([buffer])  # opening reads the whole file in: its pages go until a column is used
        return table

    def release(self, start: int = 0, stop: int | None = None) -> None:
        """Release the pages of the files holding rows ``start`` to ``stop`` (every row: all)."""
        first = max(bisect.bisect_right(self.starts, start) - 1, 0)
        last = len(self.buffers) if stop is None else bisect.bisect_left(self.starts, stop)
        _release(self.buffers[first:last])


def _load_table(part_dir: Path, table: str, manifest: PartManifest, mapped: Mapped) -> pa.Table:
    schema = TABLE_SCHEMAS[table]
    pieces = []
    for segment in manifest.tables[table]:
        where = f"{part_dir.name}/{segment.path}"
        check_relative_path(segment.path, where)
        path = check_inside(part_dir / segment.path, part_dir, where)
        try:
            got = mapped.add(path)
        except FileNotFoundError:
            raise TableMismatchError(f"{where}: listed in part.json but missing") from None
        except (pa.ArrowInvalid, OSError) as exc:
            raise TableInvalidError(f"{where}: not a readable Arrow IPC file ({exc})") from None
        if got.num_rows != segment.rows:
            raise TableMismatchError(f"{where}: holds {got.num_rows} rows, part.json says {segment.rows}")
        # a long run has a segment per step: the common case, the writer's own schema, is
        # checked at once (only its non-nullable columns one by one), anything else field by field
        if got.schema.names == schema.names and got.schema.types == schema.types:
            for name in _NOT_NULL[table]:
                if got.column(name).null_count:
                    raise TableInvalidError(f"{where}: column {name!r} has nulls")
            pieces.append(got)
            continue
        for field in schema:
            if field.name not in got.column_names:
                raise TableInvalidError(f"{where}: column {field.name!r} is missing")
            found = got.schema.field(field.name).type
            if found != field.type:
                raise TableInvalidError(f"{where}: column {field.name!r} has type {found}, expected {field.type}")
            if not field.nullable and got.column(field.name).null_count:
                raise TableInvalidError(f"{where}: column {field.name!r} has nulls")
        pieces.append(got.select(schema.names))
    result = pa.concat_tables(pieces) if pieces else schema.empty_table()
    for column, allowed in _ENUMS[table].items():
        values: set[str] = set()
        for piece in _slices(result, mapped):
            values |= set(pc.unique(piece.column(column)).to_pylist()) - {None}
        unknown = values - set(allowed)
        if unknown:
            raise TableInvalidError(
                f"{part_dir.name}: {table}.{column} has unknown values {sorted(unknown)}; allowed: {list(allowed)}"
            )
    return result


_SLICE_ROWS: Final = 1 << 20
"""Rows checked at a time: a long run's tables are checked in slices, each slice's pages released
(:meth:`Part.release_pages`) before the next, so that opening a trace of any length takes the
memory of a slice."""


def _slices(table: pa.Table, mapped: Mapped | None, offset: int = 0) -> Iterator[pa.Table]:
    """``table`` (rows ``offset`` onwards of the mapped table) in slices of :data:`_SLICE_ROWS`
    rows (one, possibly empty, at least), the pages of each slice's files released after it."""
    for start in range(0, max(table.num_rows, 1), _SLICE_ROWS):
        yield table.slice(start, _SLICE_ROWS)
        if mapped is not None:
            mapped.release(offset + start, offset + min(start + _SLICE_ROWS, table.num_rows))


def _release(maps: Sequence[pa.Buffer]) -> None:
    if _MADVISE is None:
        return
    for mapped in maps:
        if mapped.size:  # a mapping starts on a page boundary; its pages stay in the page cache
            _MADVISE(mapped.address, mapped.size, mmap.MADV_DONTNEED)


def _check_references(
    part_dir: Path, manifest: PartManifest, nodes: pa.Table, calls: pa.Table, tensors: pa.Table, maps: dict[str, Mapped]
) -> None:
    where = part_dir.name
    ids = nodes.column("node").to_numpy()
    if not _all_distinct(ids):
        raise TableInvalidError(f"{where}: nodes.node has duplicate ids")
    record_ids = [piece.column("id").to_numpy().copy() for piece in _slices(tensors, maps["tensors"])]
    if not _all_distinct(np.concatenate(record_ids)):
        raise TableInvalidError(f"{where}: tensors.id has duplicate ids")
    del record_ids
    for table, name in ((calls, "calls"), (tensors, "tensors")):
        unlisted = set()
        for piece in _slices(table, maps[name]):
            unlisted |= set(pc.unique(piece.column("step")).to_pylist()) - set(manifest.steps)
        if unlisted:
            raise TableMismatchError(
                f"{where}: {name} has step {min(unlisted)}, which part.json's steps {list(manifest.steps)} lack"
            )
    known = pa.array(ids, pa.int32())
    for table, name in ((calls, "calls"), (tensors, "tensors")):
        for piece in _slices(table, maps[name]):
            unknown = pc.filter(piece.column("node"), pc.invert(pc.is_in(piece.column("node"), value_set=known)))
            if len(unknown):
                raise TableMismatchError(f"{where}: {name} names node {unknown[0].as_py()}, which is not in the nodes table")
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
    rows = [
        piece.take(found).select(columns).to_pylist()
        for piece in _slices(tensors, maps["tensors"])
        if len(found := _rows_to_check(piece))
    ]
    for row in (row for found in rows for row in found):
        _check_record_kind(where, row)
        if row["dtype"] is not None:
            parse_dtype(row["dtype"])
        shape = row["shape"]
        if shape is not None:
            if any(d is None for d in shape):
                raise TableInvalidError(f"{where}: tensor {row['id']} has a null extent in shape {shape}")
            if any(d < 0 for d in shape):
                raise InvalidShapeError(f"{where}: tensor {row['id']} has a negative extent in shape {shape}")
            if math.prod(shape) * parse_dtype(row["dtype"]).itemsize > MAX_ARRAY_BYTES:
                raise InvalidShapeError(f"{where}: tensor {row['id']} has an absurd shape {shape}")
        if row["array"] is not None:
            check_relative_path(row["array"], f"{where}: tensor {row['id']} array")


def _all_distinct(ids: np.ndarray) -> bool:
    """No id twice (writers number rows in order: increasing ids are checked without sorting)."""
    return bool(np.all(ids[1:] > ids[:-1])) or len(np.unique(ids)) == len(ids)


def _rows_to_check(tensors: pa.Table) -> np.ndarray:
    """The rows that the row-by-row checks must look at, in table order: those a column-wise test
    finds suspect (a millions-row statistics trace is checked without a Python object per row),
    and those naming an array (their paths are checked one by one)."""

    def mask(values: pa.ChunkedArray | pa.Array) -> np.ndarray:
        return np.asarray(pc.fill_null(values, True).to_numpy(zero_copy_only=False), bool)

    valid = {
        name: tensors.column(name).is_valid().to_numpy(zero_copy_only=False)
        for name in ("dtype", "shape", "level", "value_type", "array", "nan_count", "inf_count", "hash")
    }
    level = tensors.column("level")
    full = mask(pc.equal(level, "full")) & valid["level"]
    with_stats = mask(pc.is_in(level, value_set=pa.array(["full", "stats"]))) & valid["level"]
    with_hash = mask(pc.is_in(level, value_set=pa.array(["full", "hash"]))) & valid["level"]
    tensor_row = ~valid["value_type"]
    suspect = tensor_row & (
        ~valid["dtype"]
        | ~valid["shape"]
        | ~valid["level"]
        | (full != valid["array"])
        | (with_stats & ~(valid["nan_count"] & valid["inf_count"]))
        | (with_hash & ~valid["hash"])
    )
    suspect |= ~tensor_row & (valid["dtype"] | valid["shape"] | valid["level"] | valid["array"])
    suspect |= valid["array"]
    largest = 1
    for name in pc.unique(tensors.column("dtype")).drop_null().to_pylist():
        try:
            largest = max(largest, parse_dtype(name).itemsize)
        except TracespecError:
            suspect |= mask(pc.equal(tensors.column("dtype"), name)) & valid["dtype"]
    # a null extent becomes NaN here: the row goes to the exact check, which names it
    extents = pc.list_flatten(tensors.column("shape")).to_numpy(zero_copy_only=False).astype(np.float64)
    ndim = pc.list_value_length(tensors.column("shape")).fill_null(0).to_numpy()
    starts = np.cumsum(ndim) - ndim
    # the element count of each row, in float64 (exact far beyond MAX_ARRAY_BYTES), times the
    # largest item size: rows that might be near the limit go to the exact check
    elements = np.ones(len(suspect))
    shaped = ndim > 0
    if shaped.any():
        elements[shaped] = np.multiply.reduceat(np.maximum(extents, 0), starts[shaped])
        smallest = np.minimum.reduceat(extents, starts[shaped])
        suspect[shaped] |= (smallest < 0) | np.isnan(smallest)
    suspect |= elements * largest > MAX_ARRAY_BYTES / 2
    return np.flatnonzero(suspect)


def _check_record_kind(where: str, row: dict[str, Any]) -> None:
    """A row is a tensor record (dtype, shape, level set) or a value record (value_type set)."""
    tensor_columns = (row["dtype"], row["shape"], row["level"])
    if row["value_type"] is None:
        if None in tensor_columns:
            raise TableInvalidError(f"{where}: tensor {row['id']} lacks one of dtype, shape, level (and is not a value record)")
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
    maps = {name: Mapped() for name in TABLE_NAMES}
    tables = {name: _load_table(folder, name, manifest, maps[name]) for name in TABLE_NAMES}
    _check_references(folder, manifest, tables["nodes"], tables["calls"], tables["tensors"], maps)
    return Part(manifest.rank, folder, manifest, tables["nodes"], tables["calls"], tables["tensors"], maps)


class Trace:
    """A trace opened for reading. Tables are in memory; tensor data is read on request."""

    def __init__(self, path: Path | str, manifest: Manifest, parts: dict[int, Part], cache: TraceCache | None = None) -> None:
        self.path = path
        """The trace folder, or the URL of a trace on an object store."""
        self.manifest = manifest
        self.parts = parts
        self._cache = cache  # a remote trace's local copy lives as long as the Trace
        self.folder = cache.folder if cache is not None else Path(path)
        """The local folder read: the trace's own, or the cache of a trace at a URL."""

    @property
    def ranks(self) -> list[int]:
        return sorted(self.parts)

    @property
    def steps(self) -> list[int]:
        return sorted({s for part in self.parts.values() for s in part.manifest.steps})

    @property
    def complete(self) -> bool:
        """Every rank of ``world_size`` wrote its part and closed it."""
        return len(self.parts) == self.manifest.world_size and all(p.manifest.complete for p in self.parts.values())

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
                how = f"ended by {ending.how} {ending.detail or ''}".rstrip() + (
                    f" at step {ending.step}" if ending.step is not None else ""
                )
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

    def release_pages(self) -> None:
        """:meth:`Part.release_pages` of every rank."""
        for part in self.parts.values():
            part.release_pages()

    def records(
        self, *, step: int | None = None, stage: str | None = None, role: str | None = None, route: str | None = None
    ) -> pa.Table:
        """The tensor records of every rank with each one's node (``route``, ``class_name``,
        ``kind``), those of the given step, stage, role and route glob only: a table to filter
        further, or to hand to pandas (``trace.records(role="output").to_pandas()``)."""
        table = self.tensors()
        for column, value in (("step", step), ("stage", stage), ("role", role)):
            if value is not None:
                table = table.filter(pc.equal(table[column], value))
        # Arrow's hash join takes no list columns (shape): the node of each record by lookup
        nodes = {
            (n["rank"], n["node"]): n for n in self.nodes().select(["rank", "node", "route", "class_name", "kind"]).to_pylist()
        }
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

    def read_range(self, rank: int, array: str, start: int, stop: int) -> np.ndarray:
        """Elements ``start`` to ``stop`` (flat, C order) of the tensor stored as ``array`` in
        ``rank``'s store (:meth:`Part.read_range`)."""
        return self.parts[rank].read_range(array, start, stop)

    def iter_arrays(self, records: Iterable[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], np.ndarray]]:
        """Yield ``(record, array)`` one at a time for records that kept data (``array`` set)."""
        for record in records:
            if record.get("array") is not None:
                yield record, self.read(record.get("rank", 0), record["array"])

    def __repr__(self) -> str:
        state = "complete" if self.complete else "incomplete"
        return f"<Trace {self.path} {self.manifest.framework} ranks={self.ranks} steps={self.steps} {state}>"


def load_trace(
    path: str | os.PathLike[str], *, storage_options: dict[str, Any] | None = None, cache: str | os.PathLike[str] | None = None
) -> Trace:
    """Open the trace at ``path``: manifests and tables are read and checked, data is not.

    ``path`` is a folder or a URL (``s3://bucket/run``, ``gs://``, ``az://``, ``memory://``,
    ``file://``; docs/storage.md). For a URL, ``storage_options`` go to its fsspec file system
    (``{"endpoint_url": ...}``; credentials come from the store's usual environment and config
    files otherwise), and ``cache`` is a folder that keeps what was fetched for the next time
    (by default a temporary one, deleted with the trace, which also drops each array once read).
    """
    where = resolve_location(path, storage_options)
    if isinstance(where, RemoteLocation):
        return _load_remote(where, Path(cache) if cache is not None else default_cache())
    return _load_folder(where)


def _load_remote(location: RemoteLocation, cache: Path | None) -> Trace:
    held = fetch_trace(location, cache)
    local = _load_folder(held.folder, shown=location.url)
    parts = {
        rank: dataclasses.replace(
            part,
            remote=RemoteArrays(location, f"{part.folder.name}/{part.manifest.store_path}", part.store, keep=held.keeps_data),
        )
        for rank, part in local.parts.items()
    }
    return Trace(location.url, local.manifest, parts, cache=held)


def _load_folder(root: Path, shown: str | None = None) -> Trace:
    """Read the trace folder ``root`` (``shown``: what to call it, the URL of a fetched trace)."""
    if not root.is_dir():
        raise NotATraceError(f"{root}: not a folder; a trace is a folder with {MANIFEST_FILE}")
    manifest_file = check_inside(root / MANIFEST_FILE, root, f"{root.name}/{MANIFEST_FILE}")
    manifest = parse_manifest(_read_bytes(manifest_file, MANIFEST_FILE), f"{shown or root.name}/{MANIFEST_FILE}")
    parts: dict[int, Part] = {}
    for child in sorted(root.iterdir()):
        # A part folder without part.json belongs to a writer that died before its first
        # write: that rank is missing (the trace is incomplete), not corrupt.
        if child.is_dir() and _PART_DIR.match(child.name) and (child / PART_FILE).exists():
            part = _load_part(check_inside(child, root, child.name))
            parts[part.rank] = part
    beyond = [r for r in parts if r >= manifest.world_size]
    if beyond:
        raise TableMismatchError(f"{shown or root}: part rank_{beyond[0]} is outside world_size {manifest.world_size}")
    return Trace(root, manifest, parts)
