"""Storage throughput: TraceWriter / load_trace against np.save / np.load of the same tensors.

Run from the repository root::

    python bench/bench_storage.py --size-gb 1      # the figures quoted in docs/benchmarks.md
    python bench/bench_storage.py --quick          # a 128 MB smoke run

For each dtype (float32, bfloat16) the same tensors (1 to 16 MB each) are written by the
baseline, ``np.save`` into one file per tensor, fsynced, and by :class:`tracespec.TraceWriter`
(level ``full``: data, statistics and content hash, durable), then read back by ``np.load`` and by
``load_trace`` + ``Trace.read``. Baseline and tracespec alternate, and each figure is the best of
``--repeat`` rounds, so a neighbour's burst of I/O does not decide the ratio.

Caching: the page cache cannot be dropped without root, so each read follows its own write and is
served from the page cache for both sides; the read ratio compares the cost of the code path
(parsing, copying), not disk reads. Writes are fsynced on both sides, so they do hit the disk.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import ml_dtypes
import numpy as np

from tracespec import TraceWriter, load_trace

SIZES_MB = (1, 2, 4, 8, 16)
DTYPES = {"float32": np.dtype(np.float32), "bfloat16": np.dtype(ml_dtypes.bfloat16)}


def make_tensors(dtype: np.dtype, total_bytes: int, seed: int) -> list[np.ndarray]:
    """Tensors of 1 to 16 MB (cycling) of random normal values adding up to ``total_bytes``."""
    rng = np.random.default_rng(seed)
    tensors, used, i = [], 0, 0
    while used < total_bytes:
        nbytes = min(SIZES_MB[i % len(SIZES_MB)] << 20, total_bytes - used)
        rows = max(1, nbytes // (1024 * dtype.itemsize))
        tensors.append(rng.standard_normal((rows, 1024), dtype=np.float32).astype(dtype))
        used += tensors[-1].nbytes
        i += 1
    return tensors


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def raw_write(folder: Path, tensors: list[np.ndarray]) -> None:
    folder.mkdir()
    for i, t in enumerate(tensors):
        # np.save cannot store bfloat16 (a void type to it): save the bits, as a raw writer would.
        data = t.view(np.uint16) if t.dtype == ml_dtypes.bfloat16 else t
        with open(folder / f"{i}.npy", "wb") as f:
            np.save(f, data, allow_pickle=False)
            f.flush()
            os.fsync(f.fileno())
    fsync_dir(folder)


def raw_read(folder: Path, tensors: list[np.ndarray]) -> int:
    total = 0
    for i in range(len(tensors)):
        total += np.load(folder / f"{i}.npy", allow_pickle=False).nbytes
    return total


def trace_write(folder: Path, tensors: list[np.ndarray]) -> None:
    with TraceWriter(folder, framework="numpy") as writer:
        node = writer.add_node("", "Bench")
        for i, t in enumerate(tensors):
            writer.add_tensor(step=0, stage="forward", node=node, call=i, role="output", slot="0", array=t)


def trace_read(folder: Path, tensors: list[np.ndarray]) -> int:
    trace = load_trace(folder)
    total = 0
    for _, array in trace.iter_arrays(trace.tensors().to_pylist()):
        total += array.nbytes
    return total


def timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def bench_dtype(name: str, total_bytes: int, repeat: int, workdir: Path) -> dict[str, float]:
    tensors = make_tensors(DTYPES[name], total_bytes, seed=len(name))
    nbytes = sum(t.nbytes for t in tensors)
    best: dict[str, float] = {}
    for round_ in range(repeat):
        for label, write, read in (("raw", raw_write, raw_read), ("tracespec", trace_write, trace_read)):
            folder = workdir / f"{name}-{label}-{round_}"
            w = timed(lambda: write(folder, tensors))
            r = timed(lambda: read(folder, tensors))
            best[f"{label}_write"] = max(best.get(f"{label}_write", 0.0), nbytes / w)
            best[f"{label}_read"] = max(best.get(f"{label}_read", 0.0), nbytes / r)
            shutil.rmtree(folder)
    best["tensors"] = len(tensors)
    best["bytes"] = nbytes
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gb", type=float, default=1.0, help="data per dtype (default 1 GB)")
    parser.add_argument("--quick", action="store_true", help="128 MB per dtype, one round")
    parser.add_argument("--repeat", type=int, default=2, help="rounds; the best of each is kept")
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: a temp folder)")
    args = parser.parse_args(argv)
    total = (128 << 20) if args.quick else int(args.size_gb * (1 << 30))
    repeat = 1 if args.quick else args.repeat
    workdir = Path(tempfile.mkdtemp(prefix="tracespec-bench-", dir=args.dir))
    print(f"# {os.cpu_count()} CPUs, {total / 2**30:.2f} GiB per dtype, best of {repeat}, in {workdir}")
    print("| dtype | tensors | raw write GB/s | tracespec write GB/s | write ratio "
          "| raw read GB/s | tracespec read GB/s | read ratio |")
    print("|---|---|---|---|---|---|---|---|")
    ok = True
    try:
        for name in DTYPES:
            b = bench_dtype(name, total, repeat, workdir)
            wr, rr = b["tracespec_write"] / b["raw_write"], b["tracespec_read"] / b["raw_read"]
            ok &= wr >= 0.7 and rr >= 0.7
            print(f"| {name} | {int(b['tensors'])} | {b['raw_write'] / 1e9:.2f} | {b['tracespec_write'] / 1e9:.2f} "
                  f"| {wr:.2f} | {b['raw_read'] / 1e9:.2f} | {b['tracespec_read'] / 1e9:.2f} | {rr:.2f} |", flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"# target (ratios >= 0.70): {'met' if ok else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
