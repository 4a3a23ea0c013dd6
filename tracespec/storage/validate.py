"""Check that a trace conforms to the spec (``tracespec validate``).

Opening the trace already checks manifests, tables and references (:func:`load_trace`). This
module adds the tensor store: every referenced array exists, agrees with its records' dtype and
shape, and has all its chunks. ``deep`` also reads every array and checks its content hash.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from tracespec.errors import ChunkMissingError, DataMismatchError, TableMismatchError
from tracespec.format.stats import content_hash
from tracespec.storage.reader import Trace, load_trace

__all__ = ["ValidationReport", "validate_trace"]


@dataclass(frozen=True, slots=True)
class ValidationReport:
    """What a conforming trace holds."""

    trace: Trace
    records: int
    arrays: int
    stored_bytes: int

    @property
    def complete(self) -> bool:
        return self.trace.complete

    def summary(self) -> str:
        t = self.trace
        state = "complete" if t.complete else f"INCOMPLETE ({t.how_ended()})"
        missing = t.missing_ranks()
        extra = f"; ranks without a part: {missing}" if missing else ""
        return (
            f"{t.path}: valid tracespec {t.manifest.format_version} trace, {state}; "
            f"{len(t.ranks)} rank(s), {len(t.steps)} step(s), {self.records} tensor records, "
            f"{self.arrays} arrays ({self.stored_bytes / 1e6:.1f} MB){extra}"
        )


def validate_trace(path: str | os.PathLike[str], *, deep: bool = False, storage_options: dict[str, Any] | None = None,
                   cache: str | os.PathLike[str] | None = None) -> ValidationReport:
    """Raise a :class:`~tracespec.errors.TraceFormatError` subclass at the first violation.

    ``path`` may be a URL; ``storage_options`` and ``cache`` as for :func:`load_trace`."""
    trace = load_trace(path, storage_options=storage_options, cache=cache)
    records = arrays = stored = 0
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
    return ValidationReport(trace, records, arrays, stored)
