"""The dtype table (spec "Data types")."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from tracespec.errors import UnsupportedDtypeError
from tracespec.format.dtypes import DTYPES, dtype_of, parse_dtype


@pytest.mark.parametrize("name", sorted(DTYPES))
def test_every_dtype_maps_to_numpy_and_back(name: str) -> None:
    dt = parse_dtype(name)
    assert dtype_of(np.zeros(2, dt.numpy)).name == name
    assert np.dtype(dt.zarr_data_type).itemsize == dt.itemsize


@pytest.mark.parametrize(
    ("name", "storage"),
    [
        ("bfloat16", "uint16"),
        ("float8_e4m3fn", "uint8"),
        ("float8_e5m2", "uint8"),
        ("float8_e4m3fnuz", "uint8"),
        ("float8_e5m2fnuz", "uint8"),
    ],
)
def test_extension_floats_are_stored_as_unsigned_bits(name: str, storage: str) -> None:
    dt = parse_dtype(name)
    assert dt.stored_as_bits and dt.zarr_data_type == storage and dt.is_float


def test_native_types_are_stored_as_themselves() -> None:
    assert {n: d.zarr_data_type for n, d in DTYPES.items() if not d.stored_as_bits} == {
        n: n for n, d in DTYPES.items() if not d.stored_as_bits
    }


def test_big_endian_arrays_get_the_same_dtype() -> None:
    assert dtype_of(np.zeros(1, ">f8")).name == "float64"


def test_unknown_dtypes_are_rejected_with_the_list() -> None:
    with pytest.raises(UnsupportedDtypeError, match="bfloat16"):
        parse_dtype("float128")
    with pytest.raises(UnsupportedDtypeError):
        dtype_of(np.zeros(1, "U3"))
    with pytest.raises(TypeError):
        parse_dtype(16)
    assert ml_dtypes.bfloat16 is not None
