"""Tensor element types of the format (spec section "Data types").

A dtype is named by a spec string. Types that Zarr v3 has natively are stored as themselves;
``bfloat16`` and the float8 types are stored as unsigned integers of the same width (the exact
bits, never a conversion) and the array's ``attributes.tracespec.dtype`` names the true type, so a
plain Zarr reader gets the bits back and reinterprets them with one ``view``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import ml_dtypes
import numpy as np

from tracespec.errors import UnsupportedDtypeError

__all__ = ["DTYPES", "DType", "dtype_of", "numpy_dtype", "parse_dtype"]


@dataclass(frozen=True, slots=True)
class DType:
    """One element type: its spec name, its numpy type and how Zarr stores it."""

    name: str
    numpy: np.dtype
    zarr_data_type: str

    @property
    def itemsize(self) -> int:
        return self.numpy.itemsize

    @property
    def is_float(self) -> bool:
        return self.numpy.kind == "f" or self.name in _EXTENSION_FLOATS

    @property
    def is_complex(self) -> bool:
        return self.numpy.kind == "c"

    @property
    def stored_as_bits(self) -> bool:
        """True where Zarr holds the raw bits under an unsigned integer type."""
        return self.name in _EXTENSION_FLOATS


_EXTENSION_FLOATS: Final = {
    "bfloat16": ("uint16", ml_dtypes.bfloat16),
    "float8_e4m3fn": ("uint8", ml_dtypes.float8_e4m3fn),
    "float8_e5m2": ("uint8", ml_dtypes.float8_e5m2),
    "float8_e4m3fnuz": ("uint8", ml_dtypes.float8_e4m3fnuz),
    "float8_e5m2fnuz": ("uint8", ml_dtypes.float8_e5m2fnuz),
}

_NATIVE: Final = (
    "bool",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "float16",
    "float32",
    "float64",
    "complex64",
    "complex128",
)


def _build() -> dict[str, DType]:
    table: dict[str, DType] = {}
    for name in _NATIVE:
        table[name] = DType(name, np.dtype(name).newbyteorder("<"), name)
    for name, (storage, scalar) in _EXTENSION_FLOATS.items():
        table[name] = DType(name, np.dtype(scalar), storage)
    return table


DTYPES: Final[dict[str, DType]] = _build()
_BY_NUMPY: Final = {dt.numpy.newbyteorder("="): dt for dt in DTYPES.values()}


def parse_dtype(name: object) -> DType:
    """The :class:`DType` for a spec dtype name, or :class:`UnsupportedDtypeError`."""
    if not isinstance(name, str):
        raise TypeError(f"a dtype name is a string, not {type(name).__name__}")
    try:
        return DTYPES[name]
    except KeyError:
        raise UnsupportedDtypeError(f"unknown dtype {name!r}; the spec's dtypes are {', '.join(sorted(DTYPES))}") from None


def dtype_of(array: np.ndarray) -> DType:
    """The :class:`DType` of a numpy array (bfloat16 and float8 through ml_dtypes)."""
    try:
        return _BY_NUMPY[array.dtype.newbyteorder("=")]
    except KeyError:
        raise UnsupportedDtypeError(
            f"numpy dtype {array.dtype} has no tracespec dtype; supported: {', '.join(sorted(DTYPES))}"
        ) from None


def numpy_dtype(name: str) -> np.dtype:
    """The numpy dtype that holds values of the spec dtype ``name``."""
    return parse_dtype(name).numpy
