"""Traces on object stores: reading through a local cache folder, and publishing in the spec's
order (spec section 17, "Object stores"; docs/storage.md).

Constraints:
- Reading: the manifests and the table segments a ``part.json`` lists are fetched (all at once)
  into a cache folder laid out like the trace, which the local reader then opens and checks
  exactly as it checks a local trace. Tensor data is fetched lazily, one array when it is read,
  and, in a temporary cache, deleted once read: disk and memory stay those of one array.
- A cached file is reused only when the store lists an object of the same size under the same
  key (objects a published ``part.json`` names are never rewritten, section 5 item 6), and the
  whole cache of a trace is dropped when its ``manifest.json`` changed (another trace there).
- Only keys built from relative paths that pass the spec's path rule are fetched: a remote
  manifest cannot make the reader touch anything outside the trace's prefix or the cache folder.
- Writing: the writer stages a step's files locally and uploads them in waves, each complete
  before the next starts: data chunks, then arrays' and groups' ``zarr.json``, then table
  segments, then ``part.json`` with one PUT, the commit point.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final

from tracespec.errors import NotATraceError, PathEscapeError
from tracespec.format.manifest import MANIFEST_FILE, PART_FILE, parse_part_manifest
from tracespec.storage.location import RemoteLocation
from tracespec.storage.scratch import CACHE_KIND, ScratchFolder
from tracespec.storage.zarr_store import ArrayMeta, check_relative_path, chunk_key_path

__all__ = ["RemoteArrays", "RemotePublisher", "TraceCache", "fetch_trace"]

PART_DIR: Final = re.compile(r"^rank_(0|[1-9][0-9]*)$")
_ZARR_JSON: Final = "zarr.json"
_LISTINGS_KEPT: Final = 64
_GROUPS_KEPT: Final = 2


class TraceCache:
    """The local folder that holds what was fetched of one remote trace.

    ``cache`` (``--cache DIR``) keeps it across runs, under a folder named after the URL;
    without it the folder is temporary and goes with this object (or at exit; or, if this
    process is killed, when the next process reads a remote trace).
    """

    def __init__(self, location: RemoteLocation, cache: Path | None) -> None:
        self._temporary: ScratchFolder | None = None
        if cache is None:
            self._temporary = ScratchFolder(CACHE_KIND)  # deletes the caches of killed readers
            self.folder = self._temporary.path
        else:
            readable = re.sub(r"[^A-Za-z0-9_.-]+", "_", location.url.split("://", 1)[-1])[-80:]
            digest = hashlib.sha256(location.url.encode()).hexdigest()[:16]
            self.folder = Path(cache) / f"{readable}-{digest}"
            self.folder.mkdir(parents=True, exist_ok=True)

    @property
    def keeps_data(self) -> bool:
        """Tensor data stays after it was read (``--cache``); a temporary cache drops it."""
        return self._temporary is None


def fetch_trace(location: RemoteLocation, cache: Path | None) -> TraceCache:
    """Fetch ``manifest.json``, every ``part.json`` and the segments they list into a cache
    folder (at once, concurrently); the local reader checks them there. Returns the cache."""
    try:
        manifest = location.read_bytes(MANIFEST_FILE)
    except FileNotFoundError:
        raise NotATraceError(f"{location.name()}: no {MANIFEST_FILE} there; is this a tracespec trace?") from None
    held = TraceCache(location, cache)
    folder = held.folder
    cached_manifest = folder / MANIFEST_FILE
    if cached_manifest.exists() and cached_manifest.read_bytes() != manifest:
        # another trace now lives at this URL: nothing cached of the old one may be reused
        for child in folder.iterdir():
            shutil.rmtree(child) if child.is_dir() else child.unlink()
    _write_file(cached_manifest, manifest)
    ranks = [name for name in location.children() if PART_DIR.match(name)]
    for stale in folder.iterdir():
        if stale.is_dir() and stale.name not in ranks:
            shutil.rmtree(stale)
    wanted: list[tuple[str, Path, int]] = []
    for rank_dir in ranks:
        try:
            part_bytes = location.read_bytes(f"{rank_dir}/{PART_FILE}")
        except FileNotFoundError:
            shutil.rmtree(folder / rank_dir, ignore_errors=True)  # a rank that never published
            continue
        _write_file(folder / rank_dir / PART_FILE, part_bytes)
        try:
            part = parse_part_manifest(part_bytes, f"{rank_dir}/{PART_FILE}")
        except Exception:  # the local reader reports it, in the spec's order
            continue
        paths = []
        for segments in part.tables.values():
            for segment in segments:
                try:
                    paths.append(check_relative_path(segment.path, f"{rank_dir}/{PART_FILE}"))
                except Exception:  # reported by the local reader, where it meets the path
                    continue
        listed: dict[str, int] = {}
        for parent in sorted({p.rpartition("/")[0] for p in paths}):
            base = f"{rank_dir}/{parent}" if parent else rank_dir
            listed.update({f"{parent}/{k}" if parent else k: v for k, v in location.sizes(base).items()})
        for path in paths:
            if path in listed:  # an unlisted segment stays absent: the reader says it is missing
                wanted.append((f"{rank_dir}/{path}", folder / rank_dir / path, listed[path]))
    location.get_files([item for item in wanted if not _same_size(item[1], item[2])])
    return held


def _plain(name: str) -> bool:
    """``name``, found by listing, passes the path rule (only such names become local paths)."""
    try:
        check_relative_path(name, "")
    except PathEscapeError:
        return False
    return True


def _same_size(local: Path, size: int) -> bool:
    try:
        return local.stat().st_size == size
    except FileNotFoundError:
        return False


def _write_file(path: Path, payload: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.part")
    partial.write_bytes(payload)
    partial.replace(path)


class RemoteArrays:
    """The tensor store of one remote part, fetched one array at a time into the cache's copy
    of the store (``local``), where the local reader reads it."""

    def __init__(self, location: RemoteLocation, store_key: str, local: Path, keep: bool) -> None:
        self.location = location
        self.store_key = store_key
        self.local = local
        self.keep = keep
        self._lock = threading.Lock()
        self._listings: dict[str, dict[str, int]] = {}
        self._groups: dict[str, dict[str, dict[str, int]]] = {}
        self._readers: Counter[str] = Counter()

    def _listing(self, name: str) -> dict[str, int]:
        """The objects of array ``name`` (checked by the path rule) with their sizes, relative to
        the array's folder. An array in a group (``step_3/17``, as writers name them) comes from
        the listing of its whole group, made once; another from a LIST of its own."""
        group, _, leaf = name.rpartition("/")
        if group:
            return self._group(group).get(leaf, {})
        with self._lock:
            known = self._listings.get(name)
        if known is None:
            known = self.location.sizes(f"{self.store_key}/{name}")
            with self._lock:
                self._listings[name] = known
                while len(self._listings) > _LISTINGS_KEPT:
                    self._listings.pop(next(iter(self._listings)))
        return known

    def _group(self, group: str) -> dict[str, dict[str, int]]:
        """The objects of each array of ``group``, from one listing of the group (a LIST per
        thousand objects rather than one per array), and every ``zarr.json`` of the group
        fetched then, all at once: an array read later costs only its chunks' requests."""
        with self._lock:
            known = self._groups.get(group)
        if known is not None:
            return known
        arrays: dict[str, dict[str, int]] = {}
        for key, size in self.location.sizes(f"{self.store_key}/{group}").items():
            leaf, _, rest = key.partition("/")
            if rest:
                arrays.setdefault(leaf, {})[rest] = size
        self.location.get_files(
            [
                (f"{self.store_key}/{group}/{leaf}/{_ZARR_JSON}", local, objects[_ZARR_JSON])
                for leaf, objects in arrays.items()
                if _ZARR_JSON in objects
                and _plain(leaf)
                and not _same_size(local := self.local / group / leaf / _ZARR_JSON, objects[_ZARR_JSON])
            ]
        )
        with self._lock:
            self._groups[group] = arrays
            while len(self._groups) > _GROUPS_KEPT:
                self._groups.pop(next(iter(self._groups)))
        return arrays

    def fetch_meta(self, name: str) -> None:
        """Fetch the ``zarr.json`` of array ``name``; absent remotely, it stays absent here (and
        the reader reports the missing array)."""
        check_relative_path(name, f"array {name!r}")
        size = self._listing(name).get(_ZARR_JSON)
        local = self.local / name / _ZARR_JSON
        if size is None:
            local.unlink(missing_ok=True)
        elif not _same_size(local, size):
            self.location.get_files([(f"{self.store_key}/{name}/{_ZARR_JSON}", local, size)])

    def stored_sizes(self, meta: ArrayMeta) -> dict[str, int]:
        """The sizes of the files of ``meta`` the store holds (from the array's listing)."""
        listed = self._listing(meta.name)
        wanted = (_ZARR_JSON, *map(chunk_key_path, meta.chunk_keys()))
        return {relative: listed[relative] for relative in wanted if relative in listed}

    def read(self, relative: str) -> bytes | None:
        """The object ``relative`` (checked by the caller) of the store; None if absent."""
        try:
            return self.location.read_bytes(f"{self.store_key}/{relative}")
        except FileNotFoundError:
            return None

    def missing_chunks(self, meta: ArrayMeta) -> list[str]:
        """The chunk keys of ``meta`` that the store lacks or holds at the wrong size (from the
        array's listing: nothing is fetched)."""
        listed = self._listing(meta.name)
        expected = meta.chunk_bytes
        bad = []
        for key in meta.chunk_keys():
            size = listed.get(chunk_key_path(key))
            if size is None or (meta.compression is None and size != expected):
                bad.append("/".join(map(str, key)) or "c")
        return bad

    @contextmanager
    def fetched(self, meta: ArrayMeta, keys: list[tuple[int, ...]] | None = None) -> Iterator[None]:
        """Within the block, the chunks ``keys`` of ``meta`` (default: all) are in the local copy
        (those the store has); a temporary cache deletes them after the array's last reader is done."""
        listed = self._listing(meta.name)
        wanted = []
        for key in meta.chunk_keys() if keys is None else keys:
            relative = chunk_key_path(key)
            size = listed.get(relative)
            if size is not None and not _same_size(self.local / meta.name / relative, size):
                wanted.append((f"{self.store_key}/{meta.name}/{relative}", self.local / meta.name / relative, size))
        with self._lock:
            self._readers[meta.name] += 1
        try:
            self.location.get_files(wanted)
            yield
        finally:
            with self._lock:
                self._readers[meta.name] -= 1
                last = self._readers[meta.name] == 0
                if last:
                    del self._readers[meta.name]
            if last and not self.keep:  # the files only: their empty folders go with the cache
                for key in meta.chunk_keys():
                    (self.local / meta.name / chunk_key_path(key)).unlink(missing_ok=True)


class RemotePublisher:
    """Uploads a writer's staged files to the object store in the order of spec section 17.

    The writer hands over what each publication made (:meth:`add_data`, :meth:`add_segment`)
    and :meth:`publish` sends it, wave after wave, ``part.json`` last; the staged copies of data
    and segments are deleted once stored, so the staging folder holds at most what one
    publication writes.
    """

    def __init__(self, location: RemoteLocation, stage: Path, part_dir: str) -> None:
        self.location = location
        self.stage = stage
        self.part_dir = part_dir
        self._data: list[Path] = []
        self._segments: list[Path] = []

    def add_data(self, files: list[Path]) -> None:
        self._data.extend(files)

    def add_segment(self, file: Path) -> None:
        self._segments.append(file)

    def _relative(self, local: Path) -> str:
        return local.relative_to(self.stage).as_posix()

    def publish(self, part_json: bytes) -> None:
        """Upload chunks, then ``zarr.json`` files, then segments (each wave whole before the
        next), then ``part.json`` in one PUT: the moment the new rows become visible."""
        data, self._data = self._data, []
        segments, self._segments = self._segments, []
        chunks = [f for f in data if f.name != _ZARR_JSON]
        metadata = [f for f in data if f.name == _ZARR_JSON]
        for wave in (chunks, metadata, segments):
            self.location.put_files([(f, self._relative(f)) for f in wave])
            for f in wave:
                f.unlink(missing_ok=True)
        self.location.put_bytes(f"{self.part_dir}/{PART_FILE}", part_json)

    def manifest_payload(self, payload: bytes) -> bytes:
        """Create ``manifest.json`` if no writer did; return the one in the store."""
        if self.location.create(MANIFEST_FILE, payload):
            return payload
        return self.location.read_bytes(MANIFEST_FILE)
