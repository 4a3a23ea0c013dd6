"""Copy a trace between any two locations (``tracespec cp``; docs/storage.md).

Constraints:
- The copy is checked as it is made: the source's manifests and tables as :func:`load_trace`
  checks them, each array as ``validate --deep`` checks it (its record, its chunks, its content
  hash) before it is written to the destination.
- The destination is published in the spec's order (section 11 item 2, section 17): an array's
  chunks, then its ``zarr.json``, then the segments, then ``part.json`` last, so an interrupted
  copy leaves the destination's previous ``part.json`` (or none) and objects nobody names.
- Resumable: an object already at the destination with the size of the source's is not copied
  again (objects a published ``part.json`` names never change, section 5 item 6), so running the
  same copy again after an interruption moves only what is missing.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tracespec.errors import ChunkMissingError, DataMismatchError, TableMismatchError, UsageError
from tracespec.format.manifest import MANIFEST_FILE, PART_FILE, parse_part_manifest
from tracespec.format.stats import content_hash
from tracespec.storage.location import RemoteLocation, resolve_location
from tracespec.storage.reader import Part, load_trace
from tracespec.storage.zarr_store import chunk_key_path, fsync_files

__all__ = ["CopyReport", "copy_trace"]


@dataclass(frozen=True, slots=True)
class CopyReport:
    """What a copy did: objects written, and those already at the destination."""

    source: str
    destination: str
    arrays_copied: int
    arrays_present: int
    bytes_copied: int
    complete: bool

    def summary(self) -> str:
        state = "complete" if self.complete else "incomplete (the source is)"
        return (
            f"{self.source} -> {self.destination}: {self.arrays_copied} arrays copied "
            f"({self.bytes_copied / 1e6:.1f} MB), {self.arrays_present} already there; trace {state}"
        )


class _Folder:
    """A local destination, with the operations of :class:`RemoteLocation` that a copy uses:
    files are copied under a temporary name and renamed, and fsynced before ``part.json``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = str(root)

    def sizes(self, relative: str) -> dict[str, int]:
        base = self.root / relative
        found = {}
        for folder, _, files in os.walk(base):
            for name in files:
                if not name.startswith("."):
                    path = Path(folder) / name
                    found[path.relative_to(base).as_posix()] = path.stat().st_size
        return found

    def read_bytes(self, relative: str) -> bytes:
        return (self.root / relative).read_bytes()

    def create(self, relative: str, payload: bytes) -> bool:
        target = self.root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            with open(target, "xb") as f:
                f.write(payload)
                f.flush()
                os.fsync(f.fileno())
        except FileExistsError:
            return False
        fsync_files([target.parent])
        return True

    def put_files(self, files: Sequence[tuple[Path, str]]) -> None:
        written = []
        for local, relative in files:
            target = self.root / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(f".{target.name}.part")
            shutil.copyfile(local, partial)
            fsync_files([partial])
            partial.replace(target)
            written.append(target.parent)
        fsync_files(list(dict.fromkeys(written)))

    def put_bytes(self, relative: str, payload: bytes) -> None:
        target = self.root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.part")
        with open(partial, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        partial.replace(target)
        fsync_files([target.parent])


def copy_trace(
    source: str | os.PathLike[str],
    destination: str | os.PathLike[str],
    *,
    storage_options: dict[str, Any] | None = None,
    destination_options: dict[str, Any] | None = None,
    cache: str | os.PathLike[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> CopyReport:
    """Copy the trace at ``source`` to ``destination`` (folders or URLs), checking it on the way.

    ``storage_options`` are the source's (a URL's), ``destination_options`` the destination's.
    ``progress(done, total)`` is called as arrays are found at the destination or written there. A destination holding another trace
    (a different ``manifest.json``) is refused.
    """
    trace = load_trace(source, storage_options=storage_options, cache=cache)
    where = resolve_location(destination, destination_options)
    target: RemoteLocation | _Folder = where if isinstance(where, RemoteLocation) else _Folder(where)
    manifest = (trace.folder / MANIFEST_FILE).read_bytes()
    if not target.create(MANIFEST_FILE, manifest) and target.read_bytes(MANIFEST_FILE) != manifest:
        raise UsageError(f"{target.url}: holds another trace (its manifest.json differs); copy to a new place")
    arrays = {rank: _array_names(part) for rank, part in trace.parts.items()}
    total = sum(map(len, arrays.values()))
    copied = present = nbytes = done = 0
    for rank, part in trace.parts.items():
        prefix = f"{part.folder.name}/{part.manifest.store_path}"
        there = target.sizes(part.folder.name)
        store_there = {
            k[len(part.manifest.store_path) + 1 :]: v for k, v in there.items() if k.startswith(part.manifest.store_path + "/")
        }
        groups = {""} | {name.rpartition("/")[0] for name in arrays[rank]} - {""}
        for group in sorted(groups):
            relative = f"{group}/zarr.json" if group else "zarr.json"
            payload = part.group_metadata(group)
            if payload is not None and store_there.get(relative) != len(payload):
                target.put_bytes(f"{prefix}/{relative}", payload)
        batch = _Batch(target, prefix)

        def store_batch(batch: _Batch = batch) -> None:
            nonlocal nbytes, done, copied
            arrays_stored, bytes_stored = batch.store()
            copied, nbytes, done = copied + arrays_stored, nbytes + bytes_stored, done + arrays_stored
            if progress is not None and arrays_stored:
                progress(done, total)

        for name, (dtype, shape, digest) in arrays[rank].items():
            meta = part.array_meta(name)
            wanted = part.stored_sizes(meta)
            if (
                wanted
                and all(store_there.get(f"{name}/{k}") == size for k, size in wanted.items())
                and len(wanted) == len(meta.chunk_keys()) + 1
            ):
                present += 1
                done += 1
                if progress is not None:
                    progress(done, total)
            else:
                batch.add(part, name, dtype, shape, digest)
                if batch.full():
                    store_batch()
        store_batch()
        part_bytes = (part.folder / PART_FILE).read_bytes()
        if parse_part_manifest(part_bytes, f"{part.folder.name}/{PART_FILE}") != part.manifest:
            raise UsageError(f"{trace.path}: rank_{rank} changed while it was copied (still recording?); run the copy again")
        segments = [s.path for table in part.manifest.tables.values() for s in table]
        target.put_files(
            [
                (part.folder / path, f"{part.folder.name}/{path}")
                for path in segments
                if there.get(path) != (part.folder / path).stat().st_size
            ]
        )
        target.put_bytes(f"{part.folder.name}/{PART_FILE}", part_bytes)  # last: the commit point
    return CopyReport(str(trace.path), target.url, copied, present, nbytes, trace.complete)


def _array_names(part: Part) -> dict[str, tuple[str, list[int], str | None]]:
    """Each array the records name, once, with its record's dtype, shape and hash."""
    names: dict[str, tuple[str, list[int], str | None]] = {}
    for row in part.tensors.select(["id", "dtype", "shape", "array", "hash"]).to_pylist():
        name = row["array"]
        if name is None:
            continue
        if name in names and names[name][:2] != (row["dtype"], row["shape"]):
            raise TableMismatchError(
                f"rank_{part.rank}: tensor {row['id']} shares array {name} but records another dtype or shape"
            )
        names.setdefault(name, (row["dtype"], row["shape"], row["hash"]))
    return names


class _Batch:
    """Arrays checked and waiting to be written together: the writes of many small arrays go to
    the store at once (fsspec's bulk ``put``), one request each but not one round trip each.
    A remote source's files stay in the cache until they are written."""

    MAX_BYTES = 64 << 20
    MAX_ARRAYS = 256

    def __init__(self, target: RemoteLocation | _Folder, prefix: str) -> None:
        self.target = target
        self.prefix = prefix
        self.held = ExitStack()
        self.chunks: list[tuple[Path, str]] = []
        self.metadata: list[tuple[Path, str]] = []
        self.nbytes = 0

    def add(self, part: Part, name: str, dtype: str, shape: list[int], digest: str | None) -> None:
        """Check array ``name`` as ``validate --deep`` does and queue its files."""
        where = f"rank_{part.rank}: array {name}"
        meta = self.held.enter_context(part.local_array(name))
        if meta.dtype.name != dtype or list(meta.shape) != shape:
            raise TableMismatchError(
                f"{where}: the record says {dtype}{shape}, the array holds {meta.dtype.name}{list(meta.shape)}"
            )
        bad = part.missing_chunks(meta)
        if bad:
            raise ChunkMissingError(f"{where}: chunk(s) {', '.join(bad[:3])} missing or truncated")
        found = content_hash(part.read_fetched(meta))
        if digest is not None and found != digest:
            raise DataMismatchError(f"{where}: content hash {found} != recorded {digest}")
        folder = part.store / name
        for key in meta.chunk_keys():
            relative = chunk_key_path(key)
            self.chunks.append((folder / relative, f"{self.prefix}/{name}/{relative}"))
            self.nbytes += (folder / relative).stat().st_size
        self.metadata.append((folder / "zarr.json", f"{self.prefix}/{name}/zarr.json"))

    def full(self) -> bool:
        return self.nbytes >= self.MAX_BYTES or len(self.metadata) >= self.MAX_ARRAYS

    def store(self) -> tuple[int, int]:
        """Write the chunks, then the ``zarr.json`` files; return the arrays and chunk bytes
        written."""
        written = len(self.metadata), self.nbytes
        self.target.put_files(self.chunks)
        self.target.put_files(self.metadata)
        self.held.close()
        self.chunks, self.metadata, self.nbytes = [], [], 0
        return written
