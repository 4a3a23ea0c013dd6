"""Read model checkpoints tensor by tensor, and turn them into parameter-only traces.

Constraints:
- Formats: safetensors (header parsed here), PyTorch zip checkpoints ``.pt``/``.bin`` (read
  without importing torch: a restricted unpickler for ``data.pkl``, storages read from the zip),
  and Paddle ``.pdparams`` (a pickle read by a restricted unpickler that accepts numpy arrays and
  plain containers only). See :mod:`tracespec.convert.restricted_pickle`.
- Opening a checkpoint reads its metadata only. :meth:`Checkpoint.read` memory-maps one tensor's
  bytes and nothing else; the mapping goes away with the array, so streaming over a checkpoint
  keeps at most the tensors the caller holds.
- Every offset, length and shape in the file is checked against the file before use. A bad or
  hostile file raises :class:`~tracespec.errors.InputFileError` (one line, exit code 3 in the CLI).
"""

from __future__ import annotations

import json
import math
import mmap
import os
import re
import struct
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np

from tracespec.convert.restricted_pickle import (
    FileRegion,
    LazyArray,
    StorageRef,
    load_paddle_pickle,
    load_torch_pickle,
)
from tracespec.errors import InputFileError, TracespecError
from tracespec.format.dtypes import parse_dtype
from tracespec.format.limits import MAX_ARRAY_BYTES

__all__ = ["Checkpoint", "TensorEntry", "convert_checkpoint", "open_checkpoint"]

_SAFETENSORS_DTYPES: Final = {
    "BOOL": "bool",
    "U8": "uint8",
    "I8": "int8",
    "U16": "uint16",
    "I16": "int16",
    "U32": "uint32",
    "I32": "int32",
    "U64": "uint64",
    "I64": "int64",
    "F16": "float16",
    "BF16": "bfloat16",
    "F32": "float32",
    "F64": "float64",
    "C64": "complex64",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
}
_MAX_HEADER_BYTES: Final = 100 << 20
# Paddle bookkeeping entry that maps structured names to internal names; it holds no tensor.
_PADDLE_NAME_TABLE: Final = "StructuredToParameterName@@"
_ZIP_LOCAL_HEADER: Final = struct.Struct("<IHHHHHIIIHH")
_ZIP_LOCAL_MAGIC: Final = 0x04034B50


def _entries(file: Path, arrays: dict[str, LazyArray]) -> list[TensorEntry]:
    """The entries of ``arrays``; a shape beyond any real tensor is corrupt metadata."""
    for key, array in arrays.items():
        if math.prod(array.shape) * parse_dtype(array.dtype).itemsize > MAX_ARRAY_BYTES:
            raise InputFileError(f"{file}: tensor {key!r} has an absurd shape {list(array.shape)}")
    return [TensorEntry(key, a.dtype, a.shape) for key, a in arrays.items()]


@dataclass(frozen=True, slots=True)
class TensorEntry:
    """One tensor of a checkpoint: its key, spec dtype and shape (no data)."""

    key: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * parse_dtype(self.dtype).itemsize


@dataclass
class Checkpoint:
    """An opened checkpoint: tensor entries in file order, non-tensor values, and a reader.

    Use :func:`open_checkpoint` to make one.
    """

    path: Path
    format: str
    framework: str
    entries: list[TensorEntry]
    values: dict[str, object] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    _arrays: dict[str, LazyArray] = field(default_factory=dict, repr=False)
    _storage_offsets: dict[str, tuple[int, int]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.by_key = {entry.key: entry for entry in self.entries}

    @property
    def largest_tensor_bytes(self) -> int:
        return max((e.nbytes for e in self.entries), default=0)

    def read(self, key: str) -> np.ndarray:
        """The tensor ``key`` with its true dtype (read-only; backed by a private mapping)."""
        lazy = self._arrays[key]
        dtype = parse_dtype(lazy.dtype).numpy
        count = math.prod(lazy.shape)
        if count == 0:
            return np.empty(lazy.shape, dtype)
        if isinstance(lazy.source, bytes):
            flat = np.frombuffer(lazy.source, dtype, count)
            return flat.reshape(lazy.shape, order=lazy.order)
        if isinstance(lazy.source, StorageRef):
            start, length = self._storage_offsets[lazy.source.key]
        else:
            start, length = lazy.source.offset, lazy.source.length
        span = _span_elements(lazy) * dtype.itemsize
        begin = start + lazy.offset * dtype.itemsize
        if begin + span > start + length:
            raise InputFileError(f"{self.path}: tensor {key!r} reaches past its data")
        buffer = _map_region(self.path, begin, span)
        if lazy.strides is None:
            return np.ndarray(lazy.shape, dtype, buffer, order=lazy.order)
        strided = np.ndarray(lazy.shape, dtype, buffer, strides=tuple(s * dtype.itemsize for s in lazy.strides))
        return strided if strided.flags.c_contiguous else np.ascontiguousarray(strided)

    def identity(self, key: str) -> object:
        """Equal for two keys that name the same bytes viewed the same way (tied weights)."""
        lazy = self._arrays[key]
        source = (
            lazy.source.key
            if isinstance(lazy.source, StorageRef)
            else id(lazy.source)
            if isinstance(lazy.source, bytes)
            else lazy.source
        )
        return (source, lazy.dtype, lazy.shape, lazy.offset, lazy.strides, lazy.order)

    def iter_tensors(self) -> Iterator[tuple[TensorEntry, np.ndarray]]:
        """Yield ``(entry, array)`` in file order, one tensor at a time."""
        for entry in self.entries:
            yield entry, self.read(entry.key)


def _span_elements(lazy: LazyArray) -> int:
    if lazy.strides is None:
        return math.prod(lazy.shape)
    return 1 + sum((n - 1) * s for n, s in zip(lazy.shape, lazy.strides))


def _map_region(path: Path, begin: int, length: int) -> memoryview:
    """A read-only mapping of ``length`` bytes at ``begin``; unmapped when no array uses it."""
    aligned = begin - begin % mmap.ALLOCATIONGRANULARITY
    with open(path, "rb") as f:
        mapped = mmap.mmap(f.fileno(), length + begin - aligned, offset=aligned, access=mmap.ACCESS_READ)
    return memoryview(mapped)[begin - aligned :]


# --------------------------------------------------------------------------- opening


def open_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Open a safetensors, PyTorch (``.pt``/``.bin``) or Paddle (``.pdparams``) checkpoint.

    The format is recognised from the file's first bytes, not its name.
    """
    file = Path(path)
    try:
        size = file.stat().st_size
        with open(file, "rb") as f:
            head = f.read(8)
    except OSError as exc:
        raise InputFileError(f"{file}: cannot read ({exc.strerror})") from None
    if head[:4] == b"PK\x03\x04":
        return _open_torch_zip(file)
    if head[:2] == b"\x80\x02" and file.suffix not in (".pdparams", ".pdopt"):
        raise InputFileError(
            f"{file}: a legacy (pre-1.6) PyTorch checkpoint; re-save it with torch.save (the zip format) to convert it"
        )
    if head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5:
        return _open_paddle(file, size)
    if len(head) == 8 and 2 <= struct.unpack("<Q", head)[0] < min(size, _MAX_HEADER_BYTES):
        return _open_safetensors(file, size)
    raise InputFileError(f"{file}: not a checkpoint tracespec reads (safetensors, PyTorch zip .pt/.bin, Paddle .pdparams)")


def _open_safetensors(file: Path, size: int) -> Checkpoint:
    with open(file, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        raw = f.read(header_len)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputFileError(f"{file}: the safetensors header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise InputFileError(f"{file}: the safetensors header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise InputFileError(f"{file}: __metadata__ is not a JSON object")
    data_start = 8 + header_len
    placed = []
    for key, info in header.items():
        try:
            dtype = _SAFETENSORS_DTYPES[info["dtype"]]
            shape = tuple(int(d) for d in info["shape"])
            begin, end = (int(v) for v in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise InputFileError(
                f"{file}: tensor {key!r} has a malformed entry {json.dumps(info)[:120]} "
                f"(dtypes: {', '.join(_SAFETENSORS_DTYPES)})"
            ) from None
        if any(d < 0 for d in shape) or not 0 <= begin <= end or data_start + end > size:
            raise InputFileError(f"{file}: tensor {key!r} lies outside the file (offsets {begin}..{end})")
        if end - begin != math.prod(shape) * parse_dtype(dtype).itemsize:
            raise InputFileError(f"{file}: tensor {key!r} of shape {list(shape)} {dtype} has {end - begin} bytes")
        placed.append((begin, key, dtype, shape, end))
    # safetensors keeps no key order (its data is ordered by dtype size, then name): use the
    # natural order of the names, so that "layers.10" follows "layers.9" and a dtype change
    # does not move a key.
    placed.sort(key=lambda item: _natural_key(item[1]))
    arrays = {
        key: LazyArray(FileRegion(data_start + begin, end - begin), dtype, shape) for begin, key, dtype, shape, end in placed
    }
    entries = _entries(file, arrays)
    framework = {"pt": "torch", "torch": "torch", "paddle": "paddle", "np": "numpy"}.get(str(metadata.get("format")), "unknown")
    return Checkpoint(file, "safetensors", framework, entries, {}, dict(metadata), arrays)


def _natural_key(name: str) -> tuple[tuple[int, int | str], ...]:
    return tuple((0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", name))


def _open_torch_zip(file: Path) -> Checkpoint:
    try:
        with zipfile.ZipFile(file) as archive:
            infos = archive.infolist()
            pickles = [i for i in infos if i.filename.endswith("/data.pkl") and i.filename.count("/") == 1]
            if len(pickles) != 1:
                raise InputFileError(f"{file}: a zip file, but not a PyTorch checkpoint (no <name>/data.pkl)")
            prefix = pickles[0].filename[: -len("data.pkl")]
            if pickles[0].file_size > _MAX_HEADER_BYTES:
                raise InputFileError(f"{file}: data.pkl is {pickles[0].file_size} bytes; not a state dict")
            order = archive.read(prefix + "byteorder").decode() if prefix + "byteorder" in archive.NameToInfo else "little"
            if order != "little":
                raise InputFileError(f"{file}: saved with byte order {order!r}; only little-endian is supported")
            tree = load_torch_pickle(archive.read(pickles[0]), str(file))
            storages = {
                info.filename[len(prefix) + len("data/") :]: info for info in infos if info.filename.startswith(prefix + "data/")
            }
    except zipfile.BadZipFile as exc:
        raise InputFileError(f"{file}: a damaged zip archive ({exc})") from None
    lazy: dict[str, LazyArray] = {}
    values: dict[str, object] = {}
    _flatten(tree, "", lazy, values, str(file))
    offsets: dict[str, tuple[int, int]] = {}
    with open(file, "rb") as f:
        for array in lazy.values():
            ref = array.source
            assert isinstance(ref, StorageRef)
            if ref.key in offsets:
                continue
            info = storages.get(ref.key)
            if info is None:
                raise InputFileError(f"{file}: storage data/{ref.key} is missing from the archive")
            if info.compress_type != zipfile.ZIP_STORED:
                raise InputFileError(f"{file}: storage data/{ref.key} is compressed; PyTorch stores storages uncompressed")
            if info.file_size < ref.numel * parse_dtype(ref.dtype).itemsize:
                raise InputFileError(
                    f"{file}: storage data/{ref.key} holds {info.file_size} bytes, fewer than its {ref.numel} elements"
                )
            offsets[ref.key] = (_zip_data_offset(f, info, file), info.file_size)
    entries = _entries(file, lazy)
    return Checkpoint(file, "torch", "torch", entries, values, {}, lazy, offsets)


def _zip_data_offset(f: Any, info: zipfile.ZipInfo, file: Path) -> int:
    f.seek(info.header_offset)
    fields: tuple[int, ...] = _ZIP_LOCAL_HEADER.unpack(f.read(_ZIP_LOCAL_HEADER.size))
    if fields[0] != _ZIP_LOCAL_MAGIC:
        raise InputFileError(f"{file}: zip entry {info.filename} has a bad local header")
    begin = info.header_offset + _ZIP_LOCAL_HEADER.size + fields[9] + fields[10]
    if begin + info.file_size > os.fstat(f.fileno()).st_size:
        raise InputFileError(f"{file}: zip entry {info.filename} runs past the end of the file")
    return begin


def _open_paddle(file: Path, size: int) -> Checkpoint:
    with open(file, "rb") as f:
        tree = load_paddle_pickle(f, size, str(file))
    lazy: dict[str, LazyArray] = {}
    values: dict[str, object] = {}
    if isinstance(tree, dict):
        tree.pop(_PADDLE_NAME_TABLE, None)
    _flatten(tree, "", lazy, values, str(file))
    # Paddle has no uint16 tensors: numpy uint16 in a Paddle file is bfloat16 (its raw bits).
    lazy = {
        key: LazyArray(a.source, "bfloat16", a.shape, a.offset, a.strides, a.order) if a.dtype == "uint16" else a
        for key, a in lazy.items()
    }
    entries = _entries(file, lazy)
    return Checkpoint(file, "paddle", "paddle", entries, values, {}, lazy)


def _flatten(node: object, prefix: str, arrays: dict[str, LazyArray], values: dict[str, object], where: str) -> None:
    """Dotted keys for nested dicts; a Paddle tensor saved as ``(name, array)`` is its array."""
    if isinstance(node, LazyArray):
        arrays[prefix] = node
    elif isinstance(node, tuple) and len(node) == 2 and isinstance(node[0], str) and isinstance(node[1], LazyArray):
        arrays[prefix] = node[1]
    elif isinstance(node, dict):
        for key, value in node.items():
            if not isinstance(key, (str, int)):
                raise InputFileError(f"{where}: a key {key!r:.60} is neither a string nor an integer")
            _flatten(value, f"{prefix}.{key}" if prefix else str(key), arrays, values, where)
    elif isinstance(node, (list, tuple)):
        for index, value in enumerate(node):
            _flatten(value, f"{prefix}.{index}" if prefix else str(index), arrays, values, where)
    elif node is None or isinstance(node, (bool, int, float, str, bytes)):
        values[prefix] = node
    else:
        raise InputFileError(f"{where}: holds an object of type {type(node).__name__}; not a checkpoint")


# --------------------------------------------------------------------------- conversion


def split_key(key: str) -> tuple[str, str]:
    """``"encoder.layer.0.weight"`` -> (module route ``"encoder.layer.0"``, slot ``"weight"``)."""
    route, _, slot = key.rpartition(".")
    return route, slot


def convert_checkpoint(
    path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    durable: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> Checkpoint:
    """Write the checkpoint ``path`` as a parameter-only trace at ``out``; return what was read.

    The tree follows the dotted names: module route = the key up to its last dot, slot = the
    last component. Every tensor is a ``parameter`` record of step 0, stage ``forward``.
    Non-tensor values (an epoch counter...) are kept as values on their module.
    ``overwrite`` and ``durable`` are passed to :class:`~tracespec.TraceWriter`;
    ``progress(done_bytes, total_bytes)`` is called after each tensor.
    """
    from tracespec.storage import TraceWriter

    checkpoint = open_checkpoint(path)
    total, done = sum(e.nbytes for e in checkpoint.entries), 0
    source = {
        "kind": "checkpoint",
        "format": checkpoint.format,
        "path": str(Path(path).resolve()),
        "tensors": len(checkpoint.entries),
        "metadata": checkpoint.metadata,
    }
    with TraceWriter(out, framework=checkpoint.framework, source=source, overwrite=overwrite, durable=durable) as writer:
        nodes = _add_tree(writer, [*(e.key for e in checkpoint.entries), *checkpoint.values])
        written: dict[object, int] = {}
        for entry in checkpoint.entries:
            route, slot = split_key(entry.key)
            identity = checkpoint.identity(entry.key)
            same = written.get(identity)  # tied weights: one storage saved under two names
            record = writer.add_tensor(
                step=0,
                stage="forward",
                node=nodes[route],
                role="parameter",
                slot=slot,
                same_as=same,
                array=None if same is not None else checkpoint.read(entry.key),
            )
            written.setdefault(identity, record)
            done += entry.nbytes
            if progress is not None:
                progress(done, total)
        for key, value in checkpoint.values.items():
            route, slot = split_key(key)
            writer.add_value(step=0, stage="forward", node=nodes[route], role="parameter", slot=slot, value=value)
        writer.end_step(0)
    return checkpoint


def _add_tree(writer: Any, keys: list[str]) -> dict[str, int]:
    """Add the module nodes implied by dotted keys, in pre-order of first appearance."""
    children: dict[str, list[str]] = {"": []}
    for key in keys:
        route = split_key(key)[0]
        parts = route.split(".") if route else []
        for depth in range(1, len(parts) + 1):
            child, parent = ".".join(parts[:depth]), ".".join(parts[: depth - 1])
            if child not in children:
                children[child] = []
                children[parent].append(child)
    nodes: dict[str, int] = {}

    def add(route: str, parent: int | None, position: int) -> None:
        nodes[route] = writer.add_node(route, "", parent=parent, position=position)
        for index, child in enumerate(children[route]):
            add(child, nodes[route], index)

    try:
        add("", None, 0)
    except RecursionError:
        raise TracespecError("checkpoint keys nest deeper than Python's recursion limit") from None
    return nodes
