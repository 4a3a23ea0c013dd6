"""Metrics in float64 against direct numpy formulas, ULPs in the stored dtype, statistics, hashes;
ranges of a pair measured apart and folded into the bits of one pass."""

from __future__ import annotations

import itertools
import math

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tracespec.compare.metrics import BLOCK, RangeSums, compare_arrays, compare_hashes, compare_stats, fold_ranges, measure_range
from tracespec.compare.tolerance import DEFAULT_TOLERANCES, Tolerance
from tracespec.format.stats import compute_stats

F32 = DEFAULT_TOLERANCES["float32"]


def test_metrics_match_numpy_formulas() -> None:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((7, 11)).astype(np.float32)
    b = (a + rng.standard_normal(a.shape) * 1e-3).astype(np.float32)
    m = compare_arrays(a, b, F32)
    x, y = a.astype(np.float64), b.astype(np.float64)
    assert m.max_abs == pytest.approx(np.abs(y - x).max())
    assert m.max_rel == pytest.approx((np.abs(y - x) / np.abs(x)).max())
    assert m.mean_abs == pytest.approx(np.abs(y - x).mean())
    assert m.rmse == pytest.approx(math.sqrt(((y - x) ** 2).mean()))
    assert m.cosine == pytest.approx(float(x.ravel() @ y.ravel() / np.linalg.norm(x) / np.linalg.norm(y)))
    assert m.sqnr_db == pytest.approx(10 * math.log10((x**2).sum() / ((y - x) ** 2).sum()))
    bound = F32.atol * math.sqrt((x**2).mean()) + F32.rtol * np.abs(x)
    assert m.mismatched == int((np.abs(y - x) > bound).sum())
    worst = np.unravel_index(np.argmax(np.abs(y - x) / bound), a.shape)
    assert tuple(m.worst_index or ()) == tuple(int(i) for i in worst)


def test_blockwise_streaming_gives_the_same_answer_as_one_block() -> None:
    rng = np.random.default_rng(1)
    a = rng.standard_normal(BLOCK * 2 + 17).astype(np.float32)
    b = a.copy()
    b[BLOCK + 5] += 1.0
    m = compare_arrays(a, b, F32)
    assert m.mismatched == 1 and m.worst_index == [BLOCK + 5]
    assert m.max_abs == pytest.approx(1.0, rel=1e-6)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64, ml_dtypes.bfloat16, ml_dtypes.float8_e4m3fn])
@pytest.mark.parametrize("steps", [1, 3])
def test_ulp_distance_counts_representable_values(dtype: type, steps: int) -> None:
    a = np.array([1.0, 0.5, 0.0, -2.0], dtype=dtype)
    bits = a.view(f"u{a.itemsize}")
    sign = np.where(a < 0, -1, 1).astype(np.int64)  # away from zero on both sides
    b = (bits.astype(np.int64) + sign * sign * steps).astype(bits.dtype).view(dtype)
    m = compare_arrays(a, b, DEFAULT_TOLERANCES["float64"])
    assert m.ulp_dtype == np.dtype(dtype).name and m.max_ulp == steps


def test_ulp_across_zero_counts_both_sides() -> None:
    a = np.array([np.float32(1e-45)])  # the smallest subnormal
    b = np.array([np.float32(-1e-45)])
    assert compare_arrays(a, b, F32).max_ulp == 2


def test_mixed_dtypes_use_the_coarser_for_ulps() -> None:
    a = np.linspace(-2, 2, 50, dtype=np.float32)
    b = a.astype(ml_dtypes.bfloat16)
    m = compare_arrays(a, b, DEFAULT_TOLERANCES["bfloat16"])
    assert m.ulp_dtype == "bfloat16" and m.max_ulp == 0
    assert m.mismatched == 0 and not m.identical


def test_nan_and_inf_positions_must_agree() -> None:
    a = np.array([1.0, np.nan, np.inf, 2.0], dtype=np.float32)
    same = compare_arrays(a, a.copy(), F32)
    assert same.identical
    moved = compare_arrays(a, np.array([np.nan, 1.0, np.inf, 2.0], dtype=np.float32), F32)
    assert not moved.nan_agree and moved.inf_agree
    flipped = compare_arrays(a, np.array([1.0, np.nan, -np.inf, 2.0], dtype=np.float32), F32)
    assert flipped.nan_agree and not flipped.inf_agree


@given(hnp.arrays(np.float32, hnp.array_shapes(max_dims=3, max_side=6), elements=st.floats(-1e3, 1e3, width=32)))
def test_an_array_compared_with_itself_is_identical(a: np.ndarray) -> None:
    m = compare_arrays(a, a.copy(), F32)
    assert m.identical and m.max_abs == 0 and m.mismatched == 0


def test_statistics_only_records_are_compared_by_their_moments() -> None:
    a = np.random.default_rng(2).standard_normal(1000).astype(np.float32)
    close = compare_stats(compute_stats(a), compute_stats(a * np.float32(1 + 1e-7)), F32)
    assert close.kind == "stats" and close.tolerance_ratio is not None and close.tolerance_ratio <= 1
    far = compare_stats(compute_stats(a), compute_stats(a * np.float32(1.01)), F32)
    assert far.tolerance_ratio is not None and far.tolerance_ratio > 1
    nan = a.copy()
    nan[3] = np.nan
    assert not compare_stats(compute_stats(a), compute_stats(nan), F32).nan_agree


def test_hash_only_records_say_equal_or_not() -> None:
    assert compare_hashes("xxh3_128:aa", "xxh3_128:aa").identical
    differ = compare_hashes("xxh3_128:aa", "xxh3_128:bb")
    assert not differ.identical and "not bitwise identical" in (differ.note or "")


def test_non_finite_metrics_become_null_in_json() -> None:
    a = np.zeros(4, np.float32)
    m = compare_arrays(a, np.ones(4, np.float32), Tolerance(0.0, 0.0, False))
    doc = m.to_json()
    assert doc["sqnr_db"] is None and doc["tolerance_ratio"] is None


def test_threads_do_not_change_the_result(monkeypatch: pytest.MonkeyPatch) -> None:
    from tracespec.compare import metrics

    rng = np.random.default_rng(3)
    a = rng.standard_normal(BLOCK * 6 + 5).astype(np.float32)
    b = (a + rng.standard_normal(a.size).astype(np.float32) * np.float32(1e-4)).astype(np.float32)
    monkeypatch.setattr(metrics, "WORKERS", 4)
    threaded = compare_arrays(a, b, F32)
    monkeypatch.setattr(metrics, "WORKERS", 1)
    assert compare_arrays(a, b, F32) == threaded


def _split_at(a: np.ndarray, b: np.ndarray, bounds: list[int], tolerance: Tolerance, scale: float) -> list[RangeSums]:
    """The ranges between ``bounds`` measured apart, as the workers of a Dask diff measure them:
    first without the sums of ranges whose bytes agree, then, where others differ, with them."""
    flat_a, flat_b = a.reshape(-1), b.reshape(-1)
    pieces = list(itertools.pairwise(bounds))
    found = [measure_range(flat_a[s:e], flat_b[s:e], s, tolerance, scale, sums_if_identical=False) for s, e in pieces]
    if all(part.identical for part in found):
        return found
    return [
        part if part.blocks is not None else measure_range(flat_a[s:e], flat_b[s:e], s, tolerance, scale)
        for part, (s, e) in zip(found, pieces)
    ]


@pytest.mark.parametrize(
    "case", ["rounding", "non-finite-in-one-half", "one-range-differs", "identical", "complex", "mixed-dtypes"]
)
def test_ranges_folded_in_order_give_the_bits_of_one_pass(case: str) -> None:
    """A tensor pair split into ranges of whole blocks, each measured alone and their block sums
    folded in order, gives exactly (every bit of every float) what one pass over the pair gives."""
    rng = np.random.default_rng(5)
    a = rng.standard_normal((1311, 1000)).astype(np.float32)  # 5 blocks and 280 elements
    b = (a * (1 + 1e-6 * rng.standard_normal(a.shape))).astype(np.float32)
    tolerance = F32
    if case == "non-finite-in-one-half":
        b[900, 3], b[1000, 4], b[1310, 999] = np.nan, np.inf, -np.inf
        a[1000, 4] = np.inf
    elif case == "one-range-differs":
        b = a.copy()
        b[1200, 7] += 1.0
    elif case == "identical":
        b = a.copy()
    elif case == "complex":
        a = (a + 1j * rng.standard_normal(a.shape)).astype(np.complex64)
        b = (a * (1 + 1e-6 * rng.standard_normal(a.shape))).astype(np.complex64)
    elif case == "mixed-dtypes":
        b, tolerance = b.astype(ml_dtypes.bfloat16), DEFAULT_TOLERANCES["bfloat16"]
    whole = compare_arrays(a, b, tolerance, 0.9)
    assert whole.identical == (case == "identical")
    size = a.size
    for bounds in ([0, size], [0, BLOCK, 3 * BLOCK, size], [0, 2 * BLOCK, 4 * BLOCK, 5 * BLOCK, size], [0, 5 * BLOCK, size]):
        parts = _split_at(a, b, bounds, tolerance, 0.9)
        assert fold_ranges(parts, a.shape, a.dtype, b.dtype, tolerance, 0.9) == whole, bounds
    if case == "one-range-differs":  # a range that agrees has no sums unless asked, and they are needed
        flat_a, flat_b = a.reshape(-1), b.reshape(-1)
        unsummed = [
            measure_range(flat_a[s:e], flat_b[s:e], s, F32, sums_if_identical=False) for s, e in [(0, BLOCK), (BLOCK, size)]
        ]
        assert unsummed[0].blocks is None and unsummed[1].blocks is not None
        with pytest.raises(ValueError, match="without their sums"):
            fold_ranges(unsummed, a.shape, a.dtype, b.dtype, F32)


def test_ranges_must_start_on_a_block_and_cover_the_tensor_in_order() -> None:
    a = np.zeros(BLOCK * 2 + 3, np.float32)
    with pytest.raises(ValueError, match="block boundary"):
        measure_range(a[5:], a[5:], 5, F32)
    first, second = measure_range(a[:BLOCK], a[:BLOCK], 0, F32), measure_range(a[BLOCK:], a[BLOCK:], BLOCK, F32)
    assert fold_ranges([first, second], a.shape, a.dtype, a.dtype, F32).identical
    for wrong in ([second, first], [first], [first, first, second]):
        with pytest.raises(ValueError, match="do not cover"):
            fold_ranges(wrong, a.shape, a.dtype, a.dtype, F32)
