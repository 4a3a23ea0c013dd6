"""Statistics and content hashes against a plain float64 reference (spec "Statistics and hashes")."""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest
import xxhash
from hypothesis import assume, given, settings

from tracespec.format.stats import combine_stats, compute_stats, content_hash
from tracespec.testing.strategies import tensors


def reference_stats(array: np.ndarray) -> tuple[object, ...]:
    """The spec's definitions, written the slow obvious way."""
    with np.errstate(invalid="ignore"):  # casting a signalling NaN raises the invalid flag
        return _reference_stats(array)


def _reference_stats(array: np.ndarray) -> tuple[object, ...]:
    values = np.abs(array.astype(np.complex128)) if array.dtype.kind == "c" else array.astype(np.float64)
    values = values.reshape(-1)
    finite = values[np.isfinite(values)]
    nan, inf = int(np.isnan(values).sum()), int(np.isinf(values).sum())
    if finite.size == 0:
        return (None, None, None, None, None, nan, inf)
    mean = float(np.mean(finite))
    return (
        float(finite.min()),
        float(finite.max()),
        mean,
        float(np.sqrt(np.mean((finite - mean) ** 2))),
        math.sqrt(float(np.sum(finite * finite))),
        nan,
        inf,
    )


def assert_close(got: tuple[object, ...], want: tuple[object, ...]) -> None:
    for g, w in zip(got, want):
        if w is None or isinstance(w, int):
            assert g == w
        else:
            assert g == pytest.approx(w, rel=1e-9, abs=1e-12)


@settings(max_examples=200, deadline=None)
@given(array=tensors())
def test_stats_match_the_float64_definitions(array: np.ndarray) -> None:
    with np.errstate(invalid="ignore"):
        magnitudes = np.abs(array.astype(np.complex128) if array.dtype.kind == "c" else array.astype(np.float64))
    # the spec lets squares beyond float64's range overflow; keep to where the reference is exact
    assume(not np.any(np.isfinite(magnitudes) & (magnitudes > 1e150)))
    s = compute_stats(array)
    assert s.count == array.size
    assert_close((s.min, s.max, s.mean, s.std, s.l2, s.nan_count, s.inf_count), reference_stats(array))


@pytest.mark.parametrize("dtype", [np.float32, ml_dtypes.bfloat16, ml_dtypes.float8_e5m2, np.float16])
def test_stats_span_blocks_and_skip_non_finite_values(dtype: type) -> None:
    array = np.random.default_rng(0).standard_normal(700_001).astype(dtype)  # several blocks
    array[[3, 400_000]] = np.nan
    array[[5]] = np.inf
    array[[600_000]] = -np.inf
    s = compute_stats(array)
    assert (s.nan_count, s.inf_count) == (2, 2)
    assert_close((s.min, s.max, s.mean, s.std, s.l2, s.nan_count, s.inf_count), reference_stats(array))


def test_large_offset_keeps_std_precise() -> None:
    array = (1e6 + np.arange(1_000_000) % 7).astype(np.float64)
    assert compute_stats(array).std == pytest.approx(np.std(array), rel=1e-12)


def test_combined_stats_equal_stats_of_the_concatenation() -> None:
    rng = np.random.default_rng(1)
    parts = [rng.standard_normal(n) + k for k, n in enumerate((10, 1, 1000))] + [np.array([np.nan, np.inf])]
    whole = compute_stats(np.concatenate(parts))
    combined = combine_stats([compute_stats(p) for p in parts])
    assert combined.count == whole.count and combined.nan_count == 1 and combined.inf_count == 1
    for name in ("min", "max", "mean", "std", "l2"):
        assert getattr(combined, name) == pytest.approx(getattr(whole, name), rel=1e-12)


def test_hash_is_xxh3_128_of_little_endian_c_order_bytes() -> None:
    array = np.arange(12, dtype="<i4").reshape(3, 4)
    expected = "xxh3_128:" + xxhash.xxh3_128_hexdigest(array.tobytes())
    assert content_hash(array) == expected
    assert content_hash(array.astype(">i4")) == expected  # byte order does not change the hash
    assert content_hash(np.asfortranarray(array)) == expected  # nor does the memory layout
    assert content_hash(array.T) != expected  # but the logical element order does
    assert content_hash(np.zeros((0, 3), np.float32)) == "xxh3_128:" + xxhash.xxh3_128_hexdigest(b"")
    assert content_hash(np.array(np.float64(2.5))) == "xxh3_128:" + xxhash.xxh3_128_hexdigest(np.float64(2.5).tobytes())


@pytest.mark.parametrize("threads", [2, 3])
def test_threads_give_bit_identical_statistics(threads: int) -> None:
    array = np.random.default_rng(5).standard_normal(9_000_001).astype(np.float32) * 3 + 1
    array[[7, 8_000_000]] = [np.nan, -np.inf]
    assert compute_stats(array, threads=threads) == compute_stats(array)
