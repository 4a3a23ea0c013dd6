"""Large chunks are written past the page cache (O_DIRECT) and read back bit for bit: aligned and
unaligned sources, lengths that are not a whole number of blocks, padded edge chunks, and file
systems that refuse O_DIRECT."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest

from tracespec.storage import zarr_store
from tracespec.storage.reader import load_trace
from tracespec.storage.writer import TraceWriter
from tracespec.storage.zarr_store import DIRECT_IO_MIN_BYTES, WrittenFiles


def aligned_empty(nbytes: int, offset: int) -> np.ndarray:
    """``nbytes`` bytes starting ``offset`` bytes past a page boundary."""
    raw = np.empty(nbytes + 2 * 4096, dtype=np.uint8)
    start = -raw.ctypes.data % 4096 + offset
    return raw[start : start + nbytes]


@pytest.mark.parametrize("offset", [0, 8], ids=["page-aligned", "unaligned"])
@pytest.mark.parametrize("nbytes", [DIRECT_IO_MIN_BYTES, DIRECT_IO_MIN_BYTES + 3, 9 * DIRECT_IO_MIN_BYTES + 4100])
@pytest.mark.parametrize("padding", [0, 5000])
def test_a_direct_write_holds_exactly_the_payload_and_padding(tmp_path: Path, nbytes: int, offset: int, padding: int) -> None:
    payload = aligned_empty(nbytes, offset)
    payload[:] = np.random.default_rng(nbytes).integers(0, 256, nbytes, dtype=np.uint8)
    written = WrittenFiles(direct_io=True)
    written.write(tmp_path / "f", memoryview(payload), padding)
    data = (tmp_path / "f").read_bytes()
    assert len(data) == nbytes + padding == written.nbytes
    assert data[:nbytes] == payload.tobytes()
    assert data[nbytes:] == bytes(padding)


@pytest.mark.parametrize("direct_io", [True, False])
def test_traces_written_with_and_without_direct_io_read_back_exactly(tmp_path: Path, direct_io: bool) -> None:
    rng = np.random.default_rng(7)
    # 3 MiB + a row: several chunks under a 1 MiB chunk limit, the last one padded
    tensors = [
        rng.standard_normal((769, 1024)).astype(np.float32),
        rng.standard_normal((5, 7)).astype(np.float32),
        rng.standard_normal((1 << 19) + 3).astype(np.float64)[1:],
    ]
    with TraceWriter(tmp_path / "t", framework="numpy", direct_io=direct_io, chunk_limit=1 << 20) as writer:
        node = writer.add_node("", "Model")
        for call, tensor in enumerate(tensors):
            writer.add_tensor(step=0, stage="forward", node=node, call=call, role="output", slot="0", array=tensor)
    trace = load_trace(tmp_path / "t")
    got = [array for _, array in trace.iter_arrays(trace.tensors().to_pylist())]
    assert len(got) == len(tensors)
    for expected, array in zip(tensors, got):
        np.testing.assert_array_equal(array, expected)


@pytest.mark.skipif(not hasattr(os, "O_DIRECT"), reason="no O_DIRECT on this platform")
def test_a_file_system_that_refuses_direct_io_gets_ordinary_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Linux answers EINVAL where a file system cannot do O_DIRECT (FUSE, older tmpfs)
    attempts = []
    real_open = os.open

    def refusing_open(path: object, flags: int, *args: object) -> int:
        if flags & os.O_DIRECT:
            attempts.append(path)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args)

    monkeypatch.setattr(zarr_store.os, "open", refusing_open)
    monkeypatch.setattr(zarr_store, "_no_direct_io_devices", set())
    payload = np.arange(DIRECT_IO_MIN_BYTES + 11, dtype=np.uint8)
    for name in ("a", "b"):
        WrittenFiles(direct_io=True).write(tmp_path / name, memoryview(payload))
        assert (tmp_path / name).read_bytes() == payload.tobytes()
    assert attempts == [tmp_path / "a"]  # remembered: the second file skips the attempt
