"""Where a trace lives: a local folder, or a URL served by an fsspec file system (docs/storage.md).

Constraints:
- A local path (and a ``file://`` URL, which names one) keeps the local code untouched: memory
  maps, ``O_DIRECT``, fsync and rename. Only a URL of another scheme (``s3://``, ``gs://``,
  ``az://``, ``memory://``...) goes through fsspec, imported then and only then.
- Every key is the trace's root joined with a relative path that the caller checked with the
  spec's path rule (section 13), so nothing outside the trace's prefix is ever read or written.
- Reading streams: objects are fetched in ranges of :data:`RANGE_BYTES`, many at once, at most
  :data:`IN_FLIGHT_BYTES` of them in memory at a time, straight into files.
- A store's own failures (no credentials, no such bucket, the endpoint unreachable) become one
  :class:`~tracespec.errors.StorageError` line naming the URL; an absent object stays a
  ``FileNotFoundError`` for the caller, who knows what its absence means.
"""

from __future__ import annotations

import contextlib
import os
import re
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import unquote, urlsplit

from tracespec.errors import StorageError, TracespecError, UsageError

__all__ = [
    "IN_FLIGHT_BYTES",
    "RANGE_BYTES",
    "RemoteLocation",
    "current_location_defaults",
    "is_url",
    "location_defaults",
    "resolve_location",
]

RANGE_BYTES: Final = 8 << 20
"""One ranged GET: large chunks are fetched as several ranges at once."""
IN_FLIGHT_BYTES: Final = 128 << 20
"""Bytes fetched but not yet written to their files, at most: memory stays bounded whatever the
size of the objects."""

_URL: Final = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
# The extra that installs each scheme's fsspec implementation (pyproject.toml).
_EXTRA: Final = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs", "az": "azure", "abfs": "azure", "abfss": "azure"}


def is_url(path: object) -> bool:
    """``path`` is a string with a scheme (``s3://bucket/run``), not a local path."""
    return isinstance(path, str) and _URL.match(path) is not None


@dataclass(frozen=True, slots=True)
class _Defaults:
    storage_options: Mapping[str, Any] = field(default_factory=dict)
    cache: Path | None = None


_NO_DEFAULTS: Final = _Defaults()
_DEFAULTS: ContextVar[_Defaults] = ContextVar("tracespec_location_defaults")


@contextlib.contextmanager
def location_defaults(
    storage_options: Mapping[str, Any] | None = None, cache: str | os.PathLike[str] | None = None
) -> Iterator[None]:
    """Within the block, every trace opened or written at a URL without its own
    ``storage_options``/``cache`` takes these (the CLI's ``--storage-option`` and ``--cache``,
    which thereby reach every trace a command opens, a baseline included)."""
    token = _DEFAULTS.set(_Defaults(dict(storage_options or {}), None if cache is None else Path(cache)))
    try:
        yield
    finally:
        _DEFAULTS.reset(token)


def current_location_defaults() -> tuple[dict[str, Any], Path | None]:
    """The storage options and cache folder that :func:`location_defaults` set here (what a task
    run in another process, a Dask worker's, must be given to open the same traces)."""
    found = _DEFAULTS.get(_NO_DEFAULTS)
    return dict(found.storage_options), found.cache


def default_cache() -> Path | None:
    """The cache folder set by :func:`location_defaults`, if any."""
    return _DEFAULTS.get(_NO_DEFAULTS).cache


def resolve_location(
    path: str | os.PathLike[str] | RemoteLocation, storage_options: Mapping[str, Any] | None = None
) -> Path | RemoteLocation:
    """A local folder as a ``Path`` (``file://`` URLs included), any other URL as a
    :class:`RemoteLocation`."""
    if isinstance(path, RemoteLocation):
        return path
    if not is_url(path):
        if storage_options:
            raise UsageError(f"{path}: storage options apply to URLs (s3://...), not to a local folder")
        return Path(path)
    assert isinstance(path, str)
    parts = urlsplit(path)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise UsageError(f"{path}: a file:// URL names a local path (file:///abs/path), not host {parts.netloc!r}")
        return Path(unquote(parts.path))
    return RemoteLocation.open(path, {**_DEFAULTS.get(_NO_DEFAULTS).storage_options, **(storage_options or {})})


class RemoteLocation:
    """A trace's root on an object store (or any fsspec file system), and what tracespec does
    there: read, list, fetch and upload objects under the root, by relative key."""

    def __init__(self, url: str, fs: Any, root: str) -> None:
        self.url = url.rstrip("/")
        self.fs = fs
        self.root = root.rstrip("/")

    @classmethod
    def open(cls, url: str, storage_options: Mapping[str, Any]) -> RemoteLocation:
        scheme = urlsplit(url).scheme
        extra = _EXTRA.get(scheme, "remote")
        try:
            import fsspec
        except ImportError:
            raise UsageError(f"{url}: traces at URLs need fsspec: pip install 'tracespec[{extra}]'") from None
        try:
            fs, root = fsspec.url_to_fs(url, **storage_options)
        except ImportError as exc:
            raise UsageError(
                f"{url}: the {scheme}:// file system is not installed ({exc}); pip install 'tracespec[{extra}]'"
            ) from None
        except (ValueError, TypeError) as exc:
            raise UsageError(f"{url}: cannot open this URL ({exc}); check the scheme and --storage-option") from None
        if not root.strip("/"):
            raise UsageError(f"{url}: name a prefix inside the bucket for the trace (s3://bucket/run), not the bucket's root")
        return cls(url, fs, root)

    def __repr__(self) -> str:
        return f"RemoteLocation({self.url!r})"

    def key(self, relative: str) -> str:
        """The object key of ``relative`` (already checked by the path rule) under the root."""
        return f"{self.root}/{relative}" if relative else self.root

    def name(self, relative: str = "") -> str:
        """``relative`` as a URL, for messages."""
        return f"{self.url}/{relative}" if relative else self.url

    @contextlib.contextmanager
    def _io(self, relative: str, doing: str) -> Iterator[None]:
        """Turn a store's failure into one line naming the URL; absence stays FileNotFoundError."""
        try:
            yield
        except (FileNotFoundError, FileExistsError, TracespecError):
            raise
        except PermissionError as exc:
            raise StorageError(
                f"{self.name(relative)}: access denied while {doing} ({_said(exc)}); check the credentials"
            ) from None
        except Exception as exc:  # botocore, aiohttp, azure: each store's own errors, at the boundary
            raise StorageError(f"{self.name(relative)}: {doing} failed: {type(exc).__name__}: {_said(exc)}") from None

    def read_bytes(self, relative: str) -> bytes:
        with self._io(relative, "reading"):
            return bytes(self.fs.cat_file(self.key(relative)))

    def exists(self, relative: str) -> bool:
        with self._io(relative, "looking up"):
            return bool(self.fs.exists(self.key(relative)))

    def children(self, relative: str = "") -> list[str]:
        """The names directly under ``relative`` (objects and prefixes); none if there is none."""
        with self._io(relative, "listing"):
            try:
                entries = self.fs.ls(self.key(relative), detail=False, refresh=True)
            except FileNotFoundError:
                return []
        prefix = self.key(relative) + "/"
        return sorted({e.rstrip("/")[len(prefix) :].split("/")[0] for e in entries if e.startswith(prefix)} - {""})

    def sizes(self, relative: str) -> dict[str, int]:
        """Every object below ``relative``, by its key relative to ``relative``, with its size."""
        with self._io(relative, "listing"):
            self.fs.invalidate_cache(self.key(relative))  # a listing cached by fsspec may be stale
            try:
                found = self.fs.find(self.key(relative), detail=True, withdirs=False)
            except FileNotFoundError:
                return {}
        prefix = self.key(relative) + "/"
        return {
            k[len(prefix) :]: int(v.get("size") or 0)
            for k, v in found.items()
            if k.startswith(prefix) and v.get("type", "file") == "file"
        }

    def put_bytes(self, relative: str, payload: bytes) -> None:
        """Write one object with one request: on an object store it appears whole or not at all."""
        with self._io(relative, "writing"):
            self.fs.pipe_file(self.key(relative), payload)

    def create(self, relative: str, payload: bytes) -> bool:
        """Write ``relative`` only if no object is there (a conditional PUT where the store has
        one); False if one is."""
        with self._io(relative, "writing"):
            try:
                self.fs.pipe_file(self.key(relative), payload, mode="create")
            except FileExistsError:
                return False
            except (TypeError, NotImplementedError):  # an fsspec without conditional writes
                if self.fs.exists(self.key(relative)):
                    return False
                self.fs.pipe_file(self.key(relative), payload)
        return True

    def put_files(self, files: Sequence[tuple[Path, str]]) -> None:
        """Upload local files to relative keys, many at once; returns when all are stored."""
        if not files:
            return
        with self._io(files[0][1], "uploading"):
            self.fs.put([str(local) for local, _ in files], [self.key(relative) for _, relative in files])

    def remove(self, relative: str) -> None:
        """Delete every object below ``relative`` (nothing if there is none)."""
        with self._io(relative, "deleting"):
            keys = list(self.fs.find(self.key(relative), withdirs=False))
            if self.fs.exists(self.key(relative)) and self.fs.isfile(self.key(relative)):
                keys.append(self.key(relative))
            if keys:
                self.fs.rm(keys)

    def get_files(self, objects: Sequence[tuple[str, Path, int]]) -> None:
        """Fetch objects ``(relative, local file, size)`` into their files, each written under a
        temporary name and renamed when whole (a reader never meets half a file).

        The objects are cut into ranges of :data:`RANGE_BYTES`, fetched concurrently (fsspec's
        ``cat_ranges``, asynchronous on object stores) in batches of at most
        :data:`IN_FLIGHT_BYTES`. An object shorter than listed (replaced meanwhile) is an error.
        """
        pending: list[tuple[str, int, int, int]] = []  # (key, start, end, file descriptor)
        opened: list[tuple[int, Path, Path]] = []
        try:
            for relative, local, size in objects:
                local.parent.mkdir(parents=True, exist_ok=True)
                partial = local.with_name(f".{local.name}.part-{uuid.uuid4().hex[:12]}")
                fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                opened.append((fd, partial, local))
                pending.extend(
                    (self.key(relative), start, min(start + RANGE_BYTES, size), fd) for start in range(0, size, RANGE_BYTES)
                )
            batch: list[tuple[str, int, int, int]] = []
            in_flight = 0
            for piece in pending:
                batch.append(piece)
                in_flight += piece[2] - piece[1]
                if in_flight >= IN_FLIGHT_BYTES:
                    self._fetch_ranges(batch)
                    batch, in_flight = [], 0
            self._fetch_ranges(batch)
            for fd, partial, local in opened:
                os.close(fd)
                os.replace(partial, local)
            opened = []
        finally:
            for fd, partial, _ in opened:
                os.close(fd)
                partial.unlink(missing_ok=True)

    def _fetch_ranges(self, batch: list[tuple[str, int, int, int]]) -> None:
        if not batch:
            return
        keys = [key for key, *_ in batch]
        with self._io(keys[0][len(self.root) + 1 :], "fetching"):
            results = self.fs.cat_ranges(
                keys, [start for _, start, _, _ in batch], [end for _, _, end, _ in batch], on_error="return"
            )
        for (key, start, end, fd), data in zip(batch, results, strict=True):
            relative = key[len(self.root) + 1 :]
            if isinstance(data, FileNotFoundError):
                raise data
            if isinstance(data, BaseException):
                with self._io(relative, "fetching"):
                    raise data
            if len(data) != end - start:
                raise StorageError(
                    f"{self.name(relative)}: got {len(data)} bytes at offset {start}, expected {end - start}; "
                    "the object changed while it was read"
                )
            os.pwrite(fd, data, start)


def _said(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
