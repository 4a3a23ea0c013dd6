"""Hypothesis strategies for tensors of every spec dtype, for tests of anything that stores or
compares them.

Arrays are drawn as raw bytes and viewed as the dtype, so every bit pattern can appear: NaNs with
payloads, negative zero, infinities, subnormals. Compare them by bits (:func:`same_bits`), never
by value. Importing this module needs ``hypothesis`` (a test dependency, not a core one).
"""

from __future__ import annotations

from typing import Final

import numpy as np
from hypothesis import strategies as st

from tracespec.format.dtypes import DTYPES

__all__ = ["ROUNDTRIP_DTYPES", "arrays", "dtype_names", "same_bits", "shapes", "tensors"]

ROUNDTRIP_DTYPES: Final = (
    "float16",
    "float32",
    "float64",
    "bfloat16",
    "float8_e4m3fn",
    "float8_e5m2",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "bool",
    "complex64",
)
"""The dtypes the spec requires every writer and reader to round-trip bit for bit."""


def dtype_names(names: tuple[str, ...] = ROUNDTRIP_DTYPES) -> st.SearchStrategy[str]:
    """Spec dtype names."""
    return st.sampled_from(names)


def shapes(max_dims: int = 3, max_side: int = 6) -> st.SearchStrategy[tuple[int, ...]]:
    """Shapes from 0-d ``()`` up to ``max_dims`` axes, empty extents (0) included."""
    return st.lists(st.integers(0, max_side), max_size=max_dims).map(tuple)


@st.composite
def arrays(draw: st.DrawFn, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    """A C-contiguous array of ``dtype`` and ``shape`` with arbitrary bit patterns."""
    numpy_dtype = DTYPES[dtype].numpy
    count = int(np.prod(shape, dtype=np.int64))
    raw = draw(st.binary(min_size=count * numpy_dtype.itemsize, max_size=count * numpy_dtype.itemsize))
    bits = np.frombuffer(raw, dtype=np.uint8).copy()
    if dtype == "bool":
        bits &= 1  # numpy booleans are the bytes 0 and 1 only
    return bits.view(numpy_dtype).reshape(shape)


@st.composite
def tensors(draw: st.DrawFn, dtype: st.SearchStrategy[str] | None = None) -> np.ndarray:
    """Arrays of any round-trip dtype and shape, sometimes non-contiguous views.

    The non-contiguous cases are what frameworks hand over: a strided slice, a transpose, a
    reversed axis, a big-endian copy.
    """
    name = draw(dtype if dtype is not None else dtype_names())
    base = draw(arrays(name, draw(shapes())))
    layout = draw(st.sampled_from(["contiguous", "strided", "transposed", "reversed", "big_endian"]))
    if layout == "strided" and base.ndim:
        return base[::2]
    if layout == "transposed" and base.ndim > 1:
        return base.T
    if layout == "reversed" and base.ndim:
        return base[::-1]
    if layout == "big_endian" and base.dtype.kind in "iufc" and base.dtype.itemsize > 1:
        return base.astype(base.dtype.newbyteorder(">"))
    return base


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """True when ``a`` and ``b`` have the same dtype (byte order aside), shape and bytes."""
    native_a = a.dtype.newbyteorder("=")
    native_b = b.dtype.newbyteorder("=")
    if native_a != native_b or a.shape != b.shape:
        return False
    return np.ascontiguousarray(a, native_a).tobytes() == np.ascontiguousarray(b, native_b).tobytes()
