"""Check that a trace conforms to the spec (``tracespec validate``).

Opening the trace already checks manifests, tables and references (:func:`load_trace`). This
module adds the tensor store: every referenced array exists, agrees with its records' dtype and
shape, and has all its chunks. ``deep`` also reads every array and checks its content hash.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from tracespec.errors import ChunkMissingError, DataMismatchError, TableMismatchError
from tracespec.format.manifest import PART_FILE
from tracespec.format.stats import content_hash
from tracespec.storage.reader import Part, Trace, load_trace
from tracespec.storage.zarr_store import chunk_key_path

__all__ = ["ValidationReport", "validate_trace"]


@dataclass(frozen=True, slots=True)
class ValidationReport:
    """What a conforming trace holds."""

    trace: Trace
    records: int
    arrays: int
    stored_bytes: int
    unreferenced: int = 0
    """Files (objects) in the parts that no ``part.json`` names, directly or through a record:
    what an interrupted writer or copy left, or what a running writer has not published yet.
    Readers ignore them (spec section 17 item 8)."""
    unreferenced_bytes: int = 0

    @property
    def complete(self) -> bool:
        return self.trace.complete

    def summary(self) -> str:
        t = self.trace
        state = "complete" if t.complete else f"INCOMPLETE ({t.how_ended()})"
        missing = t.missing_ranks()
        extra = f"; ranks without a part: {missing}" if missing else ""
        if self.unreferenced:
            extra += (
                f"; {self.unreferenced} files ({self.unreferenced_bytes / 1e6:.1f} MB) that no part.json names "
                "(left by an interrupted writer or copy, or not yet published; readers ignore them)"
            )
        return (
            f"{t.path}: valid tracespec {t.manifest.format_version} trace, {state}; "
            f"{len(t.ranks)} rank(s), {len(t.steps)} step(s), {self.records} tensor records, "
            f"{self.arrays} arrays ({self.stored_bytes / 1e6:.1f} MB){extra}"
        )


def validate_trace(
    path: str | os.PathLike[str],
    *,
    deep: bool = False,
    storage_options: dict[str, Any] | None = None,
    cache: str | os.PathLike[str] | None = None,
) -> ValidationReport:
    """Raise a :class:`~tracespec.errors.TraceFormatError` subclass at the first violation.

    ``path`` may be a URL; ``storage_options`` and ``cache`` as for :func:`load_trace`."""
    trace = load_trace(path, storage_options=storage_options, cache=cache)
    records = arrays = stored = unreferenced = unreferenced_bytes = 0
    for rank in trace.ranks:
        part = trace.parts[rank]
        seen: dict[str, tuple[str, list[int], str | None]] = {}
        rows = part.tensors.select(["id", "dtype", "shape", "array", "hash"]).to_pylist()
        records += len(rows)
        for row in rows:
            name = row["array"]
            if name is None:
                continue
            where = f"rank_{rank}: tensor {row['id']} (array {name})"
            if name not in seen:
                meta = part.array_meta(name)
                if meta.dtype.name != row["dtype"] or list(meta.shape) != row["shape"]:
                    raise TableMismatchError(
                        f"{where}: the record says {row['dtype']}{row['shape']}, "
                        f"the array holds {meta.dtype.name}{list(meta.shape)}"
                    )
                bad = part.missing_chunks(meta)
                if bad:
                    raise ChunkMissingError(f"{where}: chunk(s) {', '.join(bad[:3])} missing or truncated")
                if deep and row["hash"] is not None:
                    found = content_hash(part.read_array(name))
                    if found != row["hash"]:
                        raise DataMismatchError(f"{where}: content hash {found} != recorded {row['hash']}")
                seen[name] = (row["dtype"], row["shape"], row["hash"])
                arrays += 1
                stored += meta.nbytes
            elif seen[name][:2] != (row["dtype"], row["shape"]):
                raise TableMismatchError(f"{where}: shares an array but records another dtype or shape")
        named = _named_files(part, seen)
        left = {path: size for path, size in part.stored_files().items() if path not in named}
        unreferenced += len(left)
        unreferenced_bytes += sum(left.values())
    return ValidationReport(trace, records, arrays, stored, unreferenced, unreferenced_bytes)


def _named_files(part: Part, arrays: Iterable[str]) -> set[str]:
    """The files of ``part`` (relative to its folder) that its ``part.json`` names: itself, its
    segments, and the store's root group, and of each array its groups, metadata and chunks."""
    store = part.manifest.store_path
    named = {PART_FILE, f"{store}/zarr.json", *(s.path for table in part.manifest.tables.values() for s in table)}
    for name in arrays:
        steps = name.split("/")
        named.update(f"{store}/{'/'.join(steps[:depth])}/zarr.json" for depth in range(1, len(steps) + 1))
        named.update(f"{store}/{name}/{chunk_key_path(key)}" for key in part.array_meta(name).chunk_keys())
    return named
