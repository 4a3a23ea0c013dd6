"""The Zarr v3 tensor store of a part (spec section "Tensor store").

Constraints this module keeps:
- Arrays are written as plain Zarr v3: a ``zarr.json`` per array and per group, a regular chunk
  grid, the ``default`` chunk-key encoding with ``/``, and the ``bytes`` codec (little endian),
  optionally followed by ``zstd``. Any Zarr v3 reader opens them.
- Chunks split the leading axes only, so each chunk of an uncompressed array is one contiguous
  byte range of the C-order tensor and is written without a copy; edge chunks are padded to the
  full chunk shape as Zarr v3 requires.
- Every chunk of a non-empty array is written. A missing chunk is an error on read, never
  silently Zarr's fill value.
- Paths come from untrusted metadata: every array name is checked before it touches the file
  system, and nothing outside the store is ever opened.
"""

from __future__ import annotations

import ctypes
import errno
import json
import math
import mmap
import os
import re
import stat
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np

from tracespec.errors import (
    ArrayInvalidError,
    ArrayMissingError,
    ChunkMissingError,
    InvalidShapeError,
    PathEscapeError,
    UsageError,
)
from tracespec.format.dtypes import DType, dtype_of, parse_dtype
from tracespec.format.limits import MAX_ARRAY_BYTES, MAX_CHUNKS

__all__ = [
    "CHUNK_BYTES",
    "ArrayMeta",
    "Confinement",
    "WrittenFiles",
    "check_inside",
    "check_relative_path",
    "chunk_key_path",
    "chunk_shape_for",
    "chunks_of_range",
    "fsync_files",
    "make_durable",
    "missing_chunks",
    "read_array",
    "read_array_meta",
    "read_range",
    "write_array",
    "write_group",
]

CHUNK_BYTES: Final = 64 << 20
"""Target upper bound on one chunk's size."""


_NAME: Final = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")
_ZARR_JSON: Final = "zarr.json"
_CHUNK_KEY_ENCODING: Final = {"name": "default", "configuration": {"separator": "/"}}


def check_relative_path(path: object, where: str) -> str:
    """Return ``path`` if it is a safe relative path (``a/b/c``), else raise.

    Safe means: a string of ``/``-separated names made of letters, digits, ``_``, ``.`` and ``-``,
    none of them ``.`` or ``..`` or starting with a dot, so it cannot leave its base folder.
    """
    if not isinstance(path, str) or not path:
        raise PathEscapeError(f"{where}: path {path!r} is not a non-empty string")
    parts = path.split("/")
    if any(p in ("", ".", "..") or not _NAME.match(p) for p in parts):
        raise PathEscapeError(f"{where}: path {path!r} is not a plain relative path inside the trace folder")
    return path


class Confinement:
    """Checks that paths, symbolic links followed, stay inside one folder, ``base``.

    A trace may contain links (it may be copied around with them); one that leads out of the
    trace would make a reader open a file the trace has no business naming. Resolving a path
    with ``os.path.realpath`` lstat's every component from the root, for every file: a reader
    that opens thousands of chunks in the same few folders spent a fifth of its time there.
    Instead each path below ``base`` is resolved once, from its already-resolved parent, so a
    new file costs one lstat. An instance is a snapshot: it belongs to one opened trace.
    """

    def __init__(self, base: Path) -> None:
        self.base = base
        self._real_base = os.path.realpath(base)
        self._resolved: dict[str, str] = {str(base): self._real_base}

    def check(self, path: Path, where: str) -> Path:
        """Return ``path`` if it stays inside ``base``; else raise ``PathEscapeError``."""
        real = self._resolve(str(path))
        if real != self._real_base and not real.startswith(self._real_base + os.sep):
            raise PathEscapeError(f"{where}: {path} leads outside {self.base} through a symbolic link")
        return path

    def _resolve(self, path: str) -> str:
        known = self._resolved.get(path)
        if known is not None:
            return known
        parent, name = os.path.split(path)
        if not name or name in (".", "..") or parent == path:
            return os.path.realpath(path)
        real_parent = self._resolve(parent)
        try:
            is_link = stat.S_ISLNK(os.lstat(path).st_mode)
        except OSError:  # absent: the open that follows reports it
            is_link = False
        real = os.path.realpath(path) if is_link else os.path.join(real_parent, name)
        self._resolved[path] = real
        return real


def check_inside(path: Path, base: Path, where: str) -> Path:
    """Return ``path`` if, symbolic links followed, it stays inside ``base``; else raise."""
    return Confinement(base).check(path, where)


def chunk_shape_for(shape: tuple[int, ...], itemsize: int, limit: int = CHUNK_BYTES) -> tuple[int, ...]:
    """A chunk shape that splits leading axes only, each chunk at most ``limit`` bytes if it can."""
    chunk = [max(d, 1) for d in shape]
    for axis in range(len(chunk)):
        inner = math.prod(chunk[axis + 1 :]) * itemsize
        if chunk[axis] * inner <= limit:
            break
        if inner <= limit:
            chunk[axis] = max(1, limit // inner)
            break
        chunk[axis] = 1
    return tuple(chunk)


def _fill_value(dt: DType) -> Any:
    if dt.zarr_data_type == "bool":
        return False
    if dt.is_complex:
        return [0.0, 0.0]
    if dt.zarr_data_type.startswith(("float", "complex")):
        return 0.0
    return 0


def _codecs(compression: str | None) -> list[dict[str, Any]]:
    codecs: list[dict[str, Any]] = [{"name": "bytes", "configuration": {"endian": "little"}}]
    if compression == "zstd":
        codecs.append({"name": "zstd", "configuration": {"level": 3, "checksum": False}})
    elif compression is not None:
        raise UsageError(f"unknown compression {compression!r}; use None or 'zstd'")
    return codecs


DIRECT_IO_MIN_BYTES: Final = 1 << 20
"""Files from this size on are written with ``O_DIRECT`` when the writer asks for direct I/O."""

_DIRECT_ALIGN: Final = 4096  # address, offset and length alignment that O_DIRECT accepts everywhere
_STAGING_MIN_BYTES: Final = 4 << 20
_staging = threading.local()
_no_direct_io_devices: set[int] = set()  # file systems that refused O_DIRECT (tmpfs, some FUSE)
_DIRECT_IO_REFUSED: Final = frozenset({errno.EINVAL, errno.EOPNOTSUPP})


@dataclass(slots=True)
class WrittenFiles:
    """What a write created: the caller makes it durable (fsync files, then folders) before it
    publishes anything that refers to it.

    ``direct_io`` writes files of at least ``DIRECT_IO_MIN_BYTES`` with ``O_DIRECT``, past the
    page cache: a recorder writing a gigabyte per training step otherwise spends more CPU in the
    kernel (copying into the page cache, then writing it back under memory pressure) than on
    the data itself, on the cores the model is training on. Where the file system refuses
    ``O_DIRECT`` the file is written the ordinary way.
    """

    nbytes: int = 0
    files: list[Path] = field(default_factory=list)
    folders: list[Path] = field(default_factory=list)
    direct_io: bool = False

    def write(self, path: Path, payload: memoryview | bytes, padding: int = 0) -> None:
        self._make_folder(path.parent)
        size = len(payload) + padding
        if not (self.direct_io and size >= DIRECT_IO_MIN_BYTES and _write_direct(path, payload, padding)):
            with open(path, "wb") as f:
                f.write(payload)
                if padding:
                    f.write(bytes(padding))
        self.files.append(path)
        self.nbytes += size

    def extend(self, other: WrittenFiles) -> None:
        self.nbytes += other.nbytes
        self.files.extend(other.files)
        self.folders.extend(other.folders)

    def _make_folder(self, folder: Path) -> None:
        """Create ``folder`` and its missing parents, recording each (every new entry counts)."""
        missing = []
        while not folder.is_dir():
            missing.append(folder)
            folder = folder.parent
        for new in reversed(missing):
            new.mkdir()
            self.folders.append(new)


def _write_direct(path: Path, payload: memoryview | bytes, padding: int) -> bool:
    """Write ``payload`` and ``padding`` zero bytes to a new file ``path`` with ``O_DIRECT``.

    A page-aligned payload goes to the disk straight from its memory; the rest (an unaligned
    payload, the tail, the padding) is first copied into this thread's aligned staging buffer,
    zero-filled to a whole block, after which the file is cut to its true size. Each part is
    one ``write``: staging through a small buffer, piece by piece, made a recorded ONNX Runtime
    step 1.7x slower (``bench/bench_onnx.py``). Returns False, having written nothing, where the
    file system refuses ``O_DIRECT``.
    """
    device = os.stat(path.parent).st_dev
    if not hasattr(os, "O_DIRECT") or device in _no_direct_io_devices:
        return False
    fd = -1
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT, 0o644)
        data = np.frombuffer(payload, dtype=np.uint8)
        total = data.size + padding
        head = data.size - data.size % _DIRECT_ALIGN if data.ctypes.data % _DIRECT_ALIGN == 0 else 0
        if head:
            _write_all(fd, data[:head].data)
        if total > head:
            whole = -(-(total - head) // _DIRECT_ALIGN) * _DIRECT_ALIGN
            staging = _staging_buffer(whole)
            staging[: data.size - head] = data[head:]
            staging[data.size - head : whole] = 0
            _write_all(fd, staging[:whole].data)
        if total % _DIRECT_ALIGN:
            os.ftruncate(fd, total)
    except OSError as exc:  # refused at open, or at the first write on some file systems
        if exc.errno not in _DIRECT_IO_REFUSED:
            raise
        _no_direct_io_devices.add(device)
        return False
    finally:
        if fd >= 0:
            os.close(fd)
    return True


def _staging_buffer(nbytes: int) -> np.ndarray:
    """This thread's page-aligned staging buffer for ``O_DIRECT`` writes, of at least ``nbytes``
    (it grows to the largest chunk written, at most ``CHUNK_BYTES`` and a block)."""
    buffer: np.ndarray | None = getattr(_staging, "buffer", None)
    if buffer is None or buffer.size < nbytes:
        buffer = _staging.buffer = np.frombuffer(mmap.mmap(-1, max(nbytes, _STAGING_MIN_BYTES)), dtype=np.uint8)
    return buffer


def _write_all(fd: int, data: memoryview) -> None:
    while len(data):
        data = data[os.write(fd, data) :]


def fsync_files(paths: list[Path]) -> None:
    """fsync each path: a file's data and size, or a folder's entries."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


SYNCFS_MIN_PATHS: Final = 64
"""From this many files and folders on, :func:`make_durable` syncs their file system at once."""

_syncfs = getattr(ctypes.CDLL(None, use_errno=True), "syncfs", None) if sys.platform == "linux" else None


def make_durable(paths: list[Path]) -> None:
    """Make ``paths`` durable (files' data and size, folders' entries), in order.

    One fsync costs a journal commit: about 0.2 ms here, and a step of a thousand arrays creates
    a few thousand folders whose entries must be made durable before the rows naming them are
    published. From ``SYNCFS_MIN_PATHS`` on, one ``syncfs(2)`` of their file system does it in
    milliseconds; it also flushes whatever else is dirty there, a cost bounded by the kernel's
    dirty limits. Where there is no ``syncfs`` (not Linux), each path is fsynced.
    """
    if len(paths) >= SYNCFS_MIN_PATHS and _syncfs is not None:
        fd = os.open(paths[0] if paths[0].is_dir() else paths[0].parent, os.O_RDONLY)
        try:
            if _syncfs(fd) == 0:
                return
        finally:
            os.close(fd)
    fsync_files(paths)


def write_group(store: Path, name: str, durable: bool = True, *, written: WrittenFiles | None = None) -> None:
    """Write the ``zarr.json`` of a group (the store root when ``name`` is empty).

    ``durable`` fsyncs the file now; ``written`` collects what was created, for a caller that
    syncs later (before publishing anything that refers to it).
    """
    folder = store / name if name else store
    doc = {"zarr_format": 3, "node_type": "group", "attributes": {}}
    record = WrittenFiles()
    record.write(folder / _ZARR_JSON, json.dumps(doc).encode())
    _finish_write(record, durable, written)


def _finish_write(record: WrittenFiles, durable: bool, written: WrittenFiles | None) -> None:
    if durable:
        fsync_files(record.files)
    if written is not None:
        written.extend(record)


def write_array(
    store: Path,
    name: str,
    array: np.ndarray,
    *,
    compression: str | None = None,
    durable: bool = True,
    chunk_limit: int = CHUNK_BYTES,
    written: WrittenFiles | None = None,
    direct_io: bool = False,
) -> tuple[int, list[Path]]:
    """Write ``array`` as the Zarr v3 array ``name`` under ``store``.

    Returns the bytes written and the folders created, whose entries the caller fsyncs before
    publishing the array. ``durable`` fsyncs the files now; ``written`` collects the files and
    folders instead, for a caller that syncs them later. ``direct_io``: see :class:`WrittenFiles`.
    """
    dt = dtype_of(array)
    # np.ascontiguousarray would turn a 0-d array into shape (1,); np.require keeps the shape.
    data = np.require(array, requirements="C")
    if data.dtype.byteorder == ">":
        data = data.astype(data.dtype.newbyteorder("<"))
    storage = data.view(dt.zarr_data_type) if dt.stored_as_bits else data
    shape = tuple(int(d) for d in storage.shape)
    chunk = chunk_shape_for(shape, dt.itemsize, chunk_limit)
    folder = store / name
    meta: dict[str, Any] = {
        "zarr_format": 3,
        "node_type": "array",
        "shape": list(shape),
        "data_type": dt.zarr_data_type,
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(chunk)}},
        "chunk_key_encoding": _CHUNK_KEY_ENCODING,
        "fill_value": _fill_value(dt),
        "codecs": _codecs(compression),
        "attributes": {"tracespec": {"dtype": dt.name}},
    }
    record = WrittenFiles(direct_io=direct_io)
    if storage.size:
        _write_chunks(folder, storage, chunk, compression, record)
    # zarr.json last: an array whose metadata exists has all its chunks.
    record.write(folder / _ZARR_JSON, json.dumps(meta).encode())
    _finish_write(record, durable, written)
    return record.nbytes, record.folders


def _write_chunks(
    folder: Path,
    storage: np.ndarray,
    chunk: tuple[int, ...],
    compression: str | None,
    written: WrittenFiles,
) -> None:
    flat = storage.reshape(-1).view(np.uint8)
    chunk_bytes = math.prod(chunk) * storage.itemsize
    assert _splits_leading_axes(storage.shape, chunk), (storage.shape, chunk)
    compressor = None
    if compression == "zstd":
        from numcodecs import Zstd

        compressor = Zstd(level=3)
    for key in _grid_keys(storage.shape, chunk):
        start, length = _chunk_span(storage.shape, chunk, key, storage.itemsize)
        payload = flat[start : start + length].data
        padding = chunk_bytes - length
        if compressor is not None:
            payload, padding = memoryview(compressor.encode(bytes(payload) + bytes(padding))), 0
        written.write(_chunk_path(folder, key), payload, padding)


def _grid_keys(shape: tuple[int, ...], chunk: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Every chunk key of a non-empty array in C order; ``()`` alone for a 0-d array."""
    if any(d == 0 for d in shape):
        return []
    grid = [math.ceil(d / c) for d, c in zip(shape, chunk)]
    return [tuple(int(i) for i in idx) for idx in np.ndindex(*grid)]


@dataclass(frozen=True, slots=True)
class ArrayMeta:
    """What a reader needs from an array's ``zarr.json``."""

    name: str
    shape: tuple[int, ...]
    dtype: DType
    chunk_shape: tuple[int, ...]
    compression: str | None

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize

    @property
    def chunk_bytes(self) -> int:
        """The size of one uncompressed chunk file (edge chunks are padded to it)."""
        return math.prod(self.chunk_shape) * self.dtype.itemsize

    def chunk_keys(self) -> list[tuple[int, ...]]:
        return _grid_keys(self.shape, self.chunk_shape)


def chunk_key_path(key: tuple[int, ...]) -> str:
    """The path of chunk ``key`` inside its array's folder (``c/0/1``; ``c`` for a 0-d array)."""
    return "/".join(["c", *map(str, key)])


def _chunk_path(folder: Path, key: tuple[int, ...]) -> Path:
    return folder / chunk_key_path(key)


def read_array_meta(confined: Confinement, name: str) -> ArrayMeta:
    """Read and check the ``zarr.json`` of array ``name`` of the store ``confined.base`` (no data
    is read)."""
    check_relative_path(name, f"array {name!r}")
    store = confined.base
    where = f"{store.name}/{name}"
    path = confined.check(store / name / _ZARR_JSON, where)
    try:
        doc = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise ArrayMissingError(f"{where}: the array has no zarr.json (missing array)") from None
    except (OSError, ValueError) as exc:
        raise ArrayInvalidError(f"{where}/zarr.json: unreadable ({exc})") from None
    try:
        if (doc["zarr_format"], doc["node_type"]) != (3, "array"):
            raise ArrayInvalidError(f"{where}/zarr.json: not a Zarr v3 array")
        if doc["chunk_grid"]["name"] != "regular" or doc["chunk_key_encoding"] != _CHUNK_KEY_ENCODING:
            raise ArrayInvalidError(
                f"{where}/zarr.json: the spec requires a regular chunk grid and chunk keys {_CHUNK_KEY_ENCODING}"
            )
        shape = tuple(doc["shape"])
        if not all(isinstance(d, int) and d >= 0 for d in shape):
            raise InvalidShapeError(f"{where}: shape {list(shape)} has a negative or non-integer extent")
        attrs = doc.get("attributes", {}).get("tracespec", {})
        dt = parse_dtype(attrs.get("dtype", doc["data_type"]))
        if dt.zarr_data_type != doc["data_type"]:
            raise ArrayInvalidError(f"{where}: data_type {doc['data_type']!r} cannot hold dtype {dt.name!r}")
        chunk = tuple(doc["chunk_grid"]["configuration"]["chunk_shape"])
        codec_names = [c["name"] for c in doc["codecs"]]
        if doc["codecs"][0].get("configuration", {}).get("endian", "little") != "little":
            raise ArrayInvalidError(f"{where}/zarr.json: the bytes codec must be little endian")
    except (KeyError, TypeError, AttributeError) as exc:
        raise ArrayInvalidError(f"{where}/zarr.json: not a Zarr v3 array ({exc!r} missing or wrong)") from None
    if math.prod(shape) * dt.itemsize > MAX_ARRAY_BYTES:
        raise InvalidShapeError(f"{where}: shape {list(shape)} is absurd ({math.prod(shape)} elements)")
    if len(chunk) != len(shape) or not all(isinstance(c, int) and c > 0 for c in chunk):
        raise ArrayInvalidError(f"{where}: chunk_shape {list(chunk)} does not fit shape {list(shape)}")
    chunks = math.prod(math.ceil(d / c) for d, c in zip(shape, chunk))
    if chunks > MAX_CHUNKS:
        raise InvalidShapeError(f"{where}: chunk_shape {list(chunk)} cuts shape {list(shape)} into {chunks} chunks")
    if codec_names not in (["bytes"], ["bytes", "zstd"]):
        raise ArrayInvalidError(f"{where}: codecs {codec_names} are not among the spec's (bytes[, zstd])")
    return ArrayMeta(name, shape, dt, chunk, "zstd" if "zstd" in codec_names else None)


def missing_chunks(store: Path, meta: ArrayMeta) -> list[str]:
    """The chunk keys of ``meta`` whose files are absent or of the wrong size."""
    folder = store / meta.name
    expected = meta.chunk_bytes
    bad = []
    for key in meta.chunk_keys():
        path = _chunk_path(folder, key)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            bad.append("/".join(map(str, key)) or "c")
            continue
        if meta.compression is None and size != expected:
            bad.append("/".join(map(str, key)) or "c")
    return bad


def read_array(confined: Confinement, meta: ArrayMeta) -> np.ndarray:
    """Read a whole array of the store ``confined.base`` with its true dtype. Chunks are read
    straight into the result."""
    return read_range(confined, meta, 0, math.prod(meta.shape)).reshape(meta.shape)


def chunks_of_range(meta: ArrayMeta, start: int, stop: int) -> list[tuple[int, ...]]:
    """The keys of the chunks that hold elements ``start`` to ``stop`` (flat, C order) of ``meta``,
    in C order: a run of consecutive chunks where chunks split the leading axes, else every chunk
    of the rows (first axis) those elements lie in."""
    if start >= stop:
        return []
    if _splits_leading_axes(meta.shape, meta.chunk_shape):
        itemsize = meta.dtype.itemsize
        low, high = start * itemsize, stop * itemsize
        found = []
        for key in meta.chunk_keys():
            first, length = _chunk_span(meta.shape, meta.chunk_shape, key, itemsize)
            if first < high and first + length > low:
                found.append(key)
        return found
    first_row, stop_row = _rows_of_range(meta.shape, start, stop)
    rows = meta.chunk_shape[0]
    return [key for key in meta.chunk_keys() if first_row // rows <= key[0] <= (stop_row - 1) // rows]


def _rows_of_range(shape: tuple[int, ...], start: int, stop: int) -> tuple[int, int]:
    """The rows (indices along the first axis) that hold elements ``start`` to ``stop``."""
    row = math.prod(shape[1:])
    return start // row, -(-stop // row)


def read_range(confined: Confinement, meta: ArrayMeta, start: int, stop: int) -> np.ndarray:
    """Elements ``start`` to ``stop`` (flat, C order) of an array of the store ``confined.base``,
    as a 1-d array of its true dtype; only the chunks holding them are opened, and of an
    uncompressed chunk only the bytes wanted are read (straight into the result)."""
    store = confined.base
    where = f"{store.name}/{meta.name}"
    size = math.prod(meta.shape)
    if not 0 <= start <= stop <= size:
        raise InvalidShapeError(f"{where}: elements {start} to {stop} are not among its {size}")
    dt = meta.dtype
    storage_dtype = np.dtype(dt.zarr_data_type).newbyteorder("<")
    result = np.empty(stop - start, dtype=storage_dtype)
    if start < stop and not _splits_leading_axes(meta.shape, meta.chunk_shape):
        return _read_general(store, meta, start, stop)
    out = result.view(np.uint8)
    decoder = None
    if meta.compression == "zstd":
        from numcodecs import Zstd

        decoder = Zstd()
    low, high = start * dt.itemsize, stop * dt.itemsize
    folder = store / meta.name
    for key in chunks_of_range(meta, start, stop):
        chunk_start, length = _chunk_span(meta.shape, meta.chunk_shape, key, dt.itemsize)
        first, last = max(low, chunk_start), min(high, chunk_start + length)
        target = out[first - low : last - low]
        path = confined.check(_chunk_path(folder, key), where)
        try:
            if decoder is None:
                with open(path, "rb") as f:
                    f.seek(first - chunk_start)
                    got = f.readinto(target.data)
            else:
                raw = np.frombuffer(_decode(decoder, path, where), np.uint8)[first - chunk_start : last - chunk_start]
                got = raw.size
                target[:got] = raw
        except FileNotFoundError:
            raise ChunkMissingError(f"{where}: chunk {'/'.join(map(str, key)) or 'c'} is missing") from None
        if got != last - first:
            raise ChunkMissingError(
                f"{where}: chunk {'/'.join(map(str, key)) or 'c'} is truncated "
                f"({first - chunk_start + got} of {last - chunk_start} bytes)"
            )
    return result.view(dt.numpy) if dt.stored_as_bits else result


def _decode(decoder: Any, path: Path, where: str) -> bytes:
    """Decompress one chunk; a corrupt or cut-off frame is a damaged chunk, not a crash."""
    try:
        return bytes(decoder.decode(path.read_bytes()))
    except FileNotFoundError:
        raise
    except Exception as exc:  # numcodecs raises RuntimeError/ValueError for bad frames
        raise ChunkMissingError(f"{where}: chunk {path.name} is corrupt ({exc})") from None


def _splits_leading_axes(shape: tuple[int, ...], chunk: tuple[int, ...]) -> bool:
    """True when every chunk is one contiguous byte range of the C-order array: the chunk is 1
    along the axes before some axis ``a`` and spans the whole array after it."""
    differing = [axis for axis, (c, s) in enumerate(zip(chunk, shape)) if c != s]
    return not differing or all(c == 1 for c in chunk[: differing[-1]])


def _chunk_span(shape: tuple[int, ...], chunk: tuple[int, ...], key: tuple[int, ...], itemsize: int) -> tuple[int, int]:
    """Byte offset and valid length of chunk ``key`` in the C-order array (leading-axis split)."""
    if not shape:
        return 0, itemsize
    strides = [itemsize * math.prod(shape[axis + 1 :]) for axis in range(len(shape))]
    start = sum(k * c * st for k, c, st in zip(key, chunk, strides))
    differing = [axis for axis, (c, s) in enumerate(zip(chunk, shape)) if c != s]
    if not differing:
        return start, math.prod(shape) * itemsize
    axis = differing[-1]
    rows = min(chunk[axis], shape[axis] - key[axis] * chunk[axis])
    return start, rows * strides[axis]


def _read_general(store: Path, meta: ArrayMeta, start: int, stop: int) -> np.ndarray:
    """Elements ``start`` to ``stop`` of an array chunked on trailing axes (written by another
    tool): the rows that hold them, read through zarr itself."""
    for key in chunks_of_range(meta, start, stop):
        if not _chunk_path(store / meta.name, key).exists():
            raise ChunkMissingError(f"{store.name}/{meta.name}: chunk {'/'.join(map(str, key))} is missing")
    import zarr

    first_row, stop_row = _rows_of_range(meta.shape, start, stop)
    try:
        rows = np.asarray(zarr.open_array(store=str(store), path=meta.name, mode="r")[first_row:stop_row])
    except Exception as exc:  # zarr's own errors on damaged chunks: report them, never crash
        raise ChunkMissingError(f"{store.name}/{meta.name}: zarr cannot read the array ({exc})") from None
    offset = first_row * math.prod(meta.shape[1:])
    data = rows.reshape(-1)[start - offset : stop - offset]
    return data.view(meta.dtype.numpy) if meta.dtype.stored_as_bits else data
