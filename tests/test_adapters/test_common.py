"""The framework-agnostic half of recording: options, slots, statistics, host buffers, registry."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, NamedTuple

import ml_dtypes
import numpy as np
import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tracespec.adapters import available_adapters
from tracespec.adapters._host import SPLIT_ELEMENTS, HostBufferPool, fast_stats, summarize_host
from tracespec.adapters._options import parse_options
from tracespec.adapters._slots import flatten, map_tensors
from tracespec.errors import UsageError
from tracespec.format.stats import TensorStats, compute_stats, content_hash


def is_array(value: Any) -> bool:
    return isinstance(value, np.ndarray)


@dataclass(frozen=True)
class Hidden:
    state: np.ndarray
    extra: tuple[np.ndarray, int]


class Pair(NamedTuple):
    a: np.ndarray
    b: np.ndarray


def test_flatten_names_every_leaf_by_its_path() -> None:
    x, y, z = np.zeros(1), np.ones(1), np.full(1, 2.0)
    value = {"logits": x, "past": [Hidden(y, (z, 3))], "n": None}
    assert [(slot, leaf if not is_array(leaf) else float(leaf[0])) for slot, leaf in flatten(value, "", is_array)] == [
        ("logits", 0.0),
        ("past.0.state", 1.0),
        ("past.0.extra.0", 2.0),
        ("past.0.extra.1", 3),
        ("n", None),
    ]
    assert [s for s, _ in flatten(x, "", is_array)] == ["0"]
    assert [s for s, _ in flatten(7, "", is_array)] == ["0"]
    assert [s for s, _ in flatten((x, y), "", is_array)] == ["0", "1"]
    assert [s for s, _ in flatten((x, {"m": y}), "0", is_array)] == ["0.0", "0.1.m"]


def test_map_tensors_rebuilds_only_what_changed() -> None:
    x, y = np.zeros(2), np.ones(2)
    value = (Pair(x, y), {"k": [x]}, Hidden(y, (x, 1)), "text")
    doubled = map_tensors(value, lambda slot, t: t * 2 if slot != "0.1" else t, "", is_array)
    assert isinstance(doubled[0], Pair) and doubled[0].b is y and doubled[0].a[0] == 0
    assert isinstance(doubled[2], Hidden) and doubled[2].state[0] == 2 and doubled[2].extra[1] == 1
    same = map_tensors(value, lambda slot, t: t, "", is_array)
    assert same is value


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"capture": "all"}, "capture is 'all'; expected one of 'full', 'stats', 'hash'"),
        ({"levels": ["full"]}, "levels must be a mapping"),
        ({"levels": {"fc": "everything"}}, r"levels\['fc'\]"),
        ({"include": 3}, "include must be"),
        ({"exclude": [1.5]}, "exclude holds 1.5"),
        ({"roles": ["weights"]}, "roles holds 'weights'; known roles"),
        ({"every": 0}, "every must be an integer >= 1"),
        ({"every": True}, "every must be an integer"),
        ({"steps": "0,1"}, "steps must be the step numbers to record"),
        ({"steps": [0, -1]}, "each of steps must be an integer >= 0"),
        ({"steps": [0, 5], "every": 5}, "give steps or every, not both"),
        ({"ops": 3}, "ops must be a route glob"),
        ({"max_bytes": -1}, "max_bytes must be an integer >= 0"),
        ({"metadata": {"f": object()}}, "metadata must be JSON-serialisable"),
        ({"rank": 1}, "give rank and world_size together"),
        ({"compression": "gzip"}, "compression is 'gzip'"),
        ({"captur": "full"}, "did you mean 'capture'"),
    ],
)
def test_bad_options_say_what_is_allowed(options: dict[str, Any], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_options(**options)


def test_options_expand_role_groups_and_keep_selector_order() -> None:
    options = parse_options(
        capture="hash", roles=["grads", "output"], levels={"grad_input": "stats", "fc": "full"}, include="blocks.*"
    )
    assert options.roles == {"grad_output", "grad_input", "parameter_grad", "output"}
    assert [key for key, _ in options.levels] == ["grad_input", "fc"]
    assert options.include == ("blocks.*",)
    assert options.to_json()["levels"] == [["grad_input", "stats"], ["fc", "full"]]


@settings(max_examples=60, deadline=None)
@given(
    hnp.arrays(
        dtype=st.sampled_from([np.float32, np.float64, np.float16, np.int32, np.uint8]),
        shape=hnp.array_shapes(min_dims=0, max_dims=3, max_side=40),
        elements={"allow_nan": True, "allow_infinity": True, "allow_subnormal": False},
    )
)
def test_fast_stats_equal_the_reference(array: np.ndarray) -> None:
    got = fast_stats(array)  # never warns (pytest turns warnings into errors)
    with np.errstate(all="ignore"):
        expected = compute_stats(array)
    assert (got.count, got.nan_count, got.inf_count) == (expected.count, expected.nan_count, expected.inf_count)
    for name in ("min", "max", "mean", "std", "l2"):
        a, b = getattr(got, name), getattr(expected, name)
        assert (a is None) == (b is None)
        if b is not None:
            assert a == pytest.approx(b, rel=1e-9, abs=1e-12 * max(1.0, abs(expected.l2 or 0.0)), nan_ok=True), name


def test_host_buffers_are_reused_once_released() -> None:
    pool = HostBufferPool()
    first = pool.copy(np.arange(12, dtype=np.float32).reshape(3, 4))
    second = pool.copy(np.ones(3))
    assert first.ctypes.data != second.ctypes.data
    np.testing.assert_array_equal(first, np.arange(12).reshape(3, 4))
    assert first.flags.c_contiguous and first.dtype == np.float32
    assert first.ctypes.data % 4096 == 0 and second.ctypes.data % 4096 == 0, "page-aligned, for direct I/O"
    address = first.ctypes.data
    del first
    third = pool.copy(np.zeros(10, dtype=np.float32))
    assert third.ctypes.data == address, "the released buffer is reused"
    assert second[0] == 1 and third.sum() == 0


def test_host_buffers_under_a_key_are_kept_apart() -> None:
    pool = HostBufferPool()
    keyed = pool.take(64, "logits")
    address = keyed.ctypes.data
    del keyed
    assert pool.take(64).ctypes.data != address, "an unkeyed take does not get a keyed buffer"
    again = pool.take(64, "logits")
    assert again.ctypes.data == address
    assert pool.take(64, "logits").ctypes.data != address, "a buffer still in use is not handed out"


def test_registry_lists_the_adapters_without_importing_frameworks() -> None:
    assert {"torch", "paddle", "onnxruntime"} <= set(available_adapters())
    code = "import sys, tracespec.adapters; print(sorted({'torch','paddle','onnxruntime'} & set(sys.modules)))"
    assert subprocess.check_output([sys.executable, "-c", code], text=True).strip() == "[]"


# --------------------------------------------------------------------- one pass over host memory
def _host_cases() -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    normal = rng.standard_normal(3 * SPLIT_ELEMENTS // 2 + 12345).astype(np.float32)
    with_nan = normal.copy()
    with_nan[len(with_nan) - 3] = np.nan  # in the second half: the helper's part
    with_inf = normal.copy()
    with_inf[5] = -np.inf
    return [
        normal,
        normal + np.float32(3000.0),  # cancellation: the reference takes over
        with_nan,
        with_inf,
        normal.astype(ml_dtypes.bfloat16),
        normal.astype(np.float16),
        normal.astype(np.float64).reshape(-1, 3)[:, 1],  # strided
        (normal * 1000).astype(np.int64),
        (normal * 50).astype(np.int8),
        normal[:2000].reshape(40, 50).T,  # non-contiguous, below the split
        np.zeros((0, 4), dtype=np.float32),
        np.float32(2.5) * np.ones((), dtype=np.float32),
        normal[:1000] > 0,  # bool: the reference
        normal[:1000].astype(np.complex64),
        normal[:1000].astype(">f4"),  # big-endian: the reference hashes it little-endian
    ]


@pytest.mark.parametrize("array", _host_cases(), ids=lambda a: f"{a.dtype}{list(a.shape)}")
@pytest.mark.parametrize("level", ["stats", "hash", "full"])
def test_one_pass_gives_the_reference_copy_hash_and_statistics(array: np.ndarray, level: str) -> None:
    copy_to = np.empty(array.shape, dtype=array.dtype) if level == "full" else None
    stats, digest = summarize_host(array, stats=level != "hash", digest=level != "stats", copy_to=copy_to)
    if level != "stats":
        assert digest == content_hash(array)
    if level != "hash":
        assert stats is not None
        with np.errstate(all="ignore"):
            assert_same_statistics(stats, compute_stats(array))
    if copy_to is not None:
        assert copy_to.tobytes() == np.ascontiguousarray(array).tobytes()


def assert_same_statistics(got: TensorStats, reference: TensorStats) -> None:
    """Counts and extremes exactly; the moments within float64 rounding of the reference's."""
    assert (got.count, got.nan_count, got.inf_count, got.min, got.max) == (
        reference.count,
        reference.nan_count,
        reference.inf_count,
        reference.min,
        reference.max,
    )
    for name in ("mean", "std", "l2"):
        expected = getattr(reference, name)
        assert getattr(got, name) == (expected if expected is None else pytest.approx(expected, rel=1e-9, abs=1e-300)), name


@pytest.mark.parametrize("dtype", [np.float32, np.float16, ml_dtypes.bfloat16, np.int32])
def test_the_split_gives_what_one_thread_gives(dtype: Any) -> None:
    # On the helper thread, summarize_host sums both halves itself: the one-thread path.
    array = (np.random.default_rng(3).standard_normal(2 * SPLIT_ELEMENTS + 777) * 100).astype(dtype)
    split_copy, one_thread_copy = np.empty_like(array), np.empty_like(array)
    split = summarize_host(array, stats=True, digest=True, copy_to=split_copy)
    with ThreadPoolExecutor(1, thread_name_prefix="tracespec-host-test") as pool:
        one_thread = pool.submit(summarize_host, array, stats=True, digest=True, copy_to=one_thread_copy).result()
    assert split == one_thread  # bit for bit: the same partial sums, added in the same order
    assert split_copy.tobytes() == one_thread_copy.tobytes() == array.tobytes()


def test_streaming_hash_equals_the_one_shot_hash_at_every_length() -> None:
    # Block boundaries fall anywhere in a long array; xxh3's short-input paths end below 240 bytes.
    data = np.random.default_rng(5).integers(0, 256, 4096, dtype=np.uint8)
    for length in [*range(260), 1023, 1024, 1025, 4096]:
        hasher = xxhash.xxh3_128()
        for start in range(0, length, 100):
            hasher.update(data[start : min(start + 100, length)].data)
        assert f"xxh3_128:{hasher.hexdigest()}" == content_hash(data[:length]), length


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX")
def test_a_forked_child_makes_its_own_helper_thread() -> None:
    array = np.arange(SPLIT_ELEMENTS + 5, dtype=np.float32)
    expected = summarize_host(array, stats=True, digest=True)  # the parent's helper thread now exists
    pid = os.fork()
    if pid == 0:  # the child: a dead helper thread would make this wait forever
        os._exit(0 if summarize_host(array, stats=True, digest=True) == expected else 1)
    deadline = time.monotonic() + 60
    while (waited := os.waitpid(pid, os.WNOHANG))[0] == 0:
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the forked child hung on its parent's helper thread")
        time.sleep(0.05)
    assert os.waitstatus_to_exitcode(waited[1]) == 0
