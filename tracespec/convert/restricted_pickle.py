"""Restricted unpicklers for the two pickle-based checkpoint formats (PyTorch zip, Paddle).

Constraints:
- Never executes code from the file. ``find_class`` hands out only the stand-ins below (inert
  Python objects that describe a tensor); every other global, whatever the module, raises
  :class:`~tracespec.errors.InputFileError`. The real ``torch`` or ``numpy`` callables named in the
  file are never called, so a file cannot reach ``os.system`` through them either.
- Never loads tensor data. PyTorch keeps data in separate zip entries (persistent ids); for Paddle,
  large ``bytes`` payloads are skipped in the file and remembered as ``(offset, length)``, so
  reading the structure of a 10 GB ``.pdparams`` costs kilobytes.
- Malformed input (truncated pickle, wrong argument types) becomes ``InputFileError``.
"""

from __future__ import annotations

import collections
import io
import math
import pickle
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any, ClassVar, Final, Literal

import numpy as np

from tracespec.errors import InputFileError

__all__ = [
    "FileRegion",
    "LazyArray",
    "StorageRef",
    "load_paddle_pickle",
    "load_torch_pickle",
]

# Payloads at least this large are skipped and referenced instead of read.
_LAZY_BYTES_MIN: Final = 4096

_TORCH_STORAGE_DTYPES: Final = {
    "DoubleStorage": "float64",
    "FloatStorage": "float32",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
    "ComplexFloatStorage": "complex64",
    "ComplexDoubleStorage": "complex128",
    "UInt16Storage": "uint16",
    "UInt32Storage": "uint32",
    "UInt64Storage": "uint64",
    "Float8_e4m3fnStorage": "float8_e4m3fn",
    "Float8_e5m2Storage": "float8_e5m2",
    "UntypedStorage": "uint8",
}

# numpy dtype codes a Paddle checkpoint may hold; structured and object dtypes are refused.
_NUMPY_CODES: Final = {
    "b1": "bool",
    "i1": "int8",
    "i2": "int16",
    "i4": "int32",
    "i8": "int64",
    "u1": "uint8",
    "u2": "uint16",
    "u4": "uint32",
    "u8": "uint64",
    "f2": "float16",
    "f4": "float32",
    "f8": "float64",
    "c8": "complex64",
    "c16": "complex128",
}


@dataclass(frozen=True, slots=True)
class FileRegion:
    """Bytes ``[offset, offset + length)`` of the checkpoint file."""

    offset: int
    length: int


@dataclass(frozen=True, slots=True)
class StorageRef:
    """A PyTorch storage: ``numel`` elements of ``dtype`` in zip entry ``data/<key>``."""

    dtype: str
    key: str
    numel: int


@dataclass(frozen=True, slots=True)
class LazyArray:
    """A tensor described, not loaded: where its bytes are and how to view them.

    ``source`` is a :class:`StorageRef` (PyTorch), a :class:`FileRegion` or in-memory ``bytes``
    (Paddle). ``offset`` and ``strides`` count elements; ``strides`` is None for a dense array in
    ``order``.
    """

    source: StorageRef | FileRegion | bytes
    dtype: str
    shape: tuple[int, ...]
    offset: int = 0
    strides: tuple[int, ...] | None = None
    order: Literal["C", "F"] = "C"


def _bad(where: str, what: str) -> InputFileError:
    return InputFileError(f"{where}: {what}; the file is corrupt or not a checkpoint")


def _int_tuple(value: object, where: str, what: str) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)) or not all(isinstance(v, int) and v >= 0 for v in value):
        raise _bad(where, f"{what} is {value!r}, expected a tuple of non-negative integers")
    return tuple(value)


class _RefusingMixin:
    where: str
    allowed: dict[tuple[str, str], Any]  # per instance: the stand-ins know where they read

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self.allowed[(module, name)]
        except KeyError:
            raise InputFileError(
                f"{self.where}: refuses to load global {module}.{name}: only tensors and plain "
                "containers are accepted (the file may be malicious; nothing was executed)"
            ) from None


# --------------------------------------------------------------------------- PyTorch


class _TorchTensorStandIns:
    """Stand-ins for ``torch._utils`` rebuild functions; they only describe the tensor."""

    def __init__(self, where: str) -> None:
        self.where = where

    def rebuild_tensor_v2(
        self, storage: object, storage_offset: object, size: object, stride: object, *_rest: object
    ) -> LazyArray:
        if not isinstance(storage, StorageRef) or not isinstance(storage_offset, int) or storage_offset < 0:
            raise _bad(self.where, "a tensor does not name a storage")
        shape = _int_tuple(size, self.where, "a tensor's size")
        strides = _int_tuple(stride, self.where, "a tensor's stride")
        if len(shape) != len(strides):
            raise _bad(self.where, f"a tensor has size {shape} but stride {strides}")
        if all(shape):
            last = storage_offset + sum((n - 1) * s for n, s in zip(shape, strides))
            if last >= storage.numel:
                raise _bad(self.where, f"a tensor of size {shape} reaches past its storage of {storage.numel} elements")
        return LazyArray(storage, storage.dtype, shape, storage_offset, strides)

    def rebuild_parameter(self, data: object, *_rest: object) -> object:
        if not isinstance(data, LazyArray):
            raise _bad(self.where, "a parameter holds no tensor")
        return data


class _TorchUnpickler(_RefusingMixin, pickle.Unpickler):
    def __init__(self, file: IO[bytes], where: str) -> None:
        super().__init__(file)
        self.where = where
        stand_ins = _TorchTensorStandIns(where)
        self.allowed = {
            ("torch._utils", "_rebuild_tensor_v2"): stand_ins.rebuild_tensor_v2,
            ("torch._utils", "_rebuild_parameter"): stand_ins.rebuild_parameter,
            ("torch._utils", "_rebuild_parameter_with_state"): stand_ins.rebuild_parameter,
            ("collections", "OrderedDict"): collections.OrderedDict,
            **{("torch", name): dtype for name, dtype in _TORCH_STORAGE_DTYPES.items()},
        }

    def persistent_load(self, pid: object) -> StorageRef:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise _bad(self.where, f"unknown persistent id {pid!r:.80}")
        _, dtype, key, _location, numel = pid
        if dtype not in _TORCH_STORAGE_DTYPES.values() or not isinstance(key, str) or not key.isdigit():
            raise _bad(self.where, f"a storage reference {pid!r:.80} is malformed")
        if not isinstance(numel, int) or numel < 0:
            raise _bad(self.where, f"storage {key} has {numel!r} elements")
        return StorageRef(dtype, key, numel)


def load_torch_pickle(data: bytes, where: str) -> Any:
    """Unpickle ``data.pkl`` of a PyTorch zip checkpoint into plain containers of LazyArray."""
    try:
        return _TorchUnpickler(io.BytesIO(data), where).load()
    except InputFileError:
        raise
    except (pickle.UnpicklingError, EOFError, TypeError, ValueError, AttributeError, IndexError, KeyError, struct.error) as exc:
        raise _bad(where, f"data.pkl does not unpickle ({type(exc).__name__}: {exc})") from None


# --------------------------------------------------------------------------- Paddle


@dataclass(slots=True)
class _NumpyDtype:
    """Stand-in for ``numpy.dtype(code, align, copy)`` plus its ``__setstate__``."""

    code: str
    byteorder: str = "<"

    def __setstate__(self, state: object) -> None:
        if isinstance(state, tuple) and len(state) >= 2 and state[1] in ("<", ">", "|", "="):
            self.byteorder = state[1]


@dataclass(slots=True)
class _NumpyArray:
    """Stand-in for ``numpy._core.multiarray._reconstruct(ndarray, ...)`` and its state."""

    where: str
    array: LazyArray | None = None

    def __setstate__(self, state: object) -> None:
        if not (isinstance(state, tuple) and len(state) == 5):
            raise _bad(self.where, "an array's state is malformed")
        _version, shape, dtype, fortran, data = state
        shape = _int_tuple(shape, self.where, "an array's shape")
        if not isinstance(dtype, _NumpyDtype) or dtype.code not in _NUMPY_CODES:
            raise _bad(self.where, f"an array has dtype {getattr(dtype, 'code', dtype)!r}; only numeric dtypes are accepted")
        if dtype.byteorder == ">" and dtype.code[1:] != "1":
            raise _bad(self.where, "an array is big-endian; only little-endian data is supported")
        if not isinstance(data, (bytes, FileRegion)):
            raise _bad(self.where, "an array's data is not raw bytes")
        nbytes = math.prod(shape) * np.dtype(dtype.code).itemsize  # Python ints: no overflow
        length = data.length if isinstance(data, FileRegion) else len(data)
        if length != nbytes:
            raise _bad(self.where, f"an array of shape {shape} and dtype {dtype.code} holds {length} bytes, expected {nbytes}")
        self.array = LazyArray(data, _NUMPY_CODES[dtype.code], shape, order="F" if fortran else "C")


class _PaddleUnpickler(_RefusingMixin, pickle._Unpickler):
    """The pure-Python unpickler, so that large byte strings can be skipped instead of read."""

    if TYPE_CHECKING:  # the pure-Python unpickler's internals, which typeshed does not describe
        _unframer: Any

        def read(self, n: int) -> bytes: ...

        def append(self, value: object) -> None: ...

    dispatch: ClassVar[dict[int, Callable[[Any], None]]] = dict(pickle._Unpickler.dispatch)

    def __init__(self, file: IO[bytes], size: int, where: str) -> None:
        super().__init__(file)
        self.source = file
        self.size = size
        self.where = where

        def reconstruct(subtype: object, shape: object, dtype_code: object) -> _NumpyArray:
            if subtype is not _NDARRAY:
                raise _bad(where, "an array of an unknown subtype")
            return _NumpyArray(where)

        def numpy_dtype(code: object, align: object = False, copy: object = True) -> _NumpyDtype:
            if not isinstance(code, str):
                raise _bad(where, "a dtype is not named by a string")
            return _NumpyDtype(code)

        self.allowed = {
            ("numpy._core.multiarray", "_reconstruct"): reconstruct,
            ("numpy.core.multiarray", "_reconstruct"): reconstruct,
            ("numpy", "ndarray"): _NDARRAY,
            ("numpy", "dtype"): numpy_dtype,
            ("builtins", "tuple"): tuple,
            ("collections", "OrderedDict"): collections.OrderedDict,
        }

    def _counted_bytes(self, length: int) -> bytes | FileRegion:
        frame = self._unframer.current_frame
        if frame is not None:
            here = frame.tell()
            in_frame = frame.seek(0, io.SEEK_END) > here
            frame.seek(here)
        if length < _LAZY_BYTES_MIN or (frame is not None and in_frame):
            data: bytes = self.read(length)
            if len(data) != length:
                raise _bad(self.where, "the pickle is truncated")
            return data
        offset = self.source.tell()
        if offset + length > self.size:
            raise _bad(self.where, f"a {length}-byte payload at offset {offset} runs past the end of the file")
        self.source.seek(length, io.SEEK_CUR)
        return FileRegion(offset, length)

    def _load_binbytes(self) -> None:
        (length,) = struct.unpack("<I", self.read(4))
        self.append(self._counted_bytes(length))

    def _load_binbytes8(self) -> None:
        (length,) = struct.unpack("<Q", self.read(8))
        self.append(self._counted_bytes(length))

    dispatch[pickle.BINBYTES[0]] = _load_binbytes
    dispatch[pickle.BINBYTES8[0]] = _load_binbytes8


_NDARRAY: Final = object()  # the stand-in for ``numpy.ndarray``: only a marker


def load_paddle_pickle(file: IO[bytes], size: int, where: str) -> Any:
    """Unpickle a ``.pdparams`` file into plain containers; arrays become :class:`LazyArray`."""

    def unwrap(value: Any) -> Any:
        if isinstance(value, _NumpyArray):
            if value.array is None:
                raise _bad(where, "an array has no data")
            return value.array
        if isinstance(value, dict):
            return type(value)((k, unwrap(v)) for k, v in value.items())
        if isinstance(value, (list, tuple)):
            return type(value)(unwrap(v) for v in value)
        return value

    try:
        return unwrap(_PaddleUnpickler(file, size, where).load())
    except InputFileError:
        raise
    except (pickle.UnpicklingError, EOFError, TypeError, ValueError, AttributeError, IndexError, KeyError, struct.error) as exc:
        raise _bad(where, f"the pickle does not load ({type(exc).__name__}: {exc})") from None
