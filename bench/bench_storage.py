"""Storage throughput: TraceWriter / load_trace against np.save / np.load of the same tensors.

Run from the repository root::

    python bench/bench_storage.py --size-gb 1      # the figures quoted in docs/benchmarks.md
    python bench/bench_storage.py --quick          # a 128 MB smoke run

For each dtype (float32, bfloat16) the same tensors (1 to 16 MB each) are written by the
baseline, ``np.save`` into one file per tensor, fsynced, and by :class:`tracespec.TraceWriter`
(level ``full``: data, float64 statistics and content hash, durable); a third contender is the
writer given the statistics, as an adapter that computes them on the device does; a fourth is
the writer with ``direct_io=True``, as the recorders use it (chunk files past the page cache).
Each is read back right after its write, by ``np.load`` and by ``load_trace`` +
``Trace.iter_arrays``.

The machine may be shared, so contenders run back to back within each round and a ratio is the
median over rounds of the ratio inside a round; rates are the best round's. Reads take the best
of three passes.

Caching: the page cache cannot be dropped without root, so each read follows its own write and is
served from the page cache for both sides; the read ratio compares the cost of the code path
(parsing, copying), not disk reads. Writes are fsynced on both sides, so they do hit the disk.
The exception is the direct I/O contender: its first read comes from the disk, and the kernel
then caches the files in smaller pieces than it does for files written through it, so even its
cached reads are slower; its read ratio shows what a reader pays right after a recording.
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import ml_dtypes
import numpy as np

from tracespec import TraceWriter, load_trace
from tracespec.format.stats import TensorStats, compute_stats

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
    # The loop holds each array until the next one is read, as a reader's consumer does
    # (`for record, array in trace.iter_arrays(...)`): freeing it first would let the allocator
    # hand the same, already-mapped pages back and spare the raw side the page faults.
    total = 0
    for i in range(len(tensors)):
        array = np.load(folder / f"{i}.npy", allow_pickle=False)
        total += array.nbytes
    return total


def trace_write(folder: Path, tensors: list[np.ndarray], stats: list[TensorStats] | None = None, direct_io: bool = False) -> None:
    with TraceWriter(folder, framework="numpy", direct_io=direct_io) as writer:
        node = writer.add_node("", "Bench")
        for i, t in enumerate(tensors):
            writer.add_tensor(
                step=0, stage="forward", node=node, call=i, role="output", slot="0", array=t, stats=stats[i] if stats else None
            )


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


def bench_dtype(name: str, total_bytes: int, rounds: int, workdir: Path) -> dict[str, list[float]]:
    """Rates in bytes/s of each contender, one entry per round.

    Within a round the contenders run back to back on the same tensors, so a ratio taken inside a
    round compares runs that met the same neighbours on this shared machine.
    """
    tensors = make_tensors(DTYPES[name], total_bytes, seed=len(name))
    stats = [compute_stats(t) for t in tensors]  # what an adapter computing on the device supplies
    nbytes = sum(t.nbytes for t in tensors)
    writers: dict[str, Callable[[Path], None]] = {
        "raw": lambda f: raw_write(f, tensors),
        "tracespec": lambda f: trace_write(f, tensors),
        "tracespec_stats_given": lambda f: trace_write(f, tensors, stats),
        "tracespec_direct": lambda f: trace_write(f, tensors, direct_io=True),
    }
    readers = {"raw": raw_read, "tracespec": trace_read, "tracespec_stats_given": trace_read, "tracespec_direct": trace_read}
    rates: dict[str, list[float]] = {}
    for round_ in range(rounds):
        for label, write in writers.items():
            folder = workdir / f"{name}-{label}-{round_}"
            rates.setdefault(f"{label}_write", []).append(nbytes / timed(functools.partial(write, folder)))
            # the read follows its own write: served from the page cache on both sides
            best_read = min(timed(functools.partial(readers[label], folder, tensors)) for _ in range(3))
            rates.setdefault(f"{label}_read", []).append(nbytes / best_read)
            shutil.rmtree(folder)
    rates["tensors"] = [len(tensors)]
    return rates


def median_ratio(rates: dict[str, list[float]], label: str, baseline: str) -> float:
    return statistics.median(a / b for a, b in zip(rates[label], rates[baseline]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gb", type=float, default=1.0, help="data per dtype (default 1 GB)")
    parser.add_argument("--quick", action="store_true", help="128 MB per dtype, one round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (default 3); ratios are medians over rounds")
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: a temp folder)")
    args = parser.parse_args(argv)
    total = (128 << 20) if args.quick else int(args.size_gb * (1 << 30))
    rounds = 1 if args.quick else args.rounds
    workdir = Path(tempfile.mkdtemp(prefix="tracespec-bench-", dir=args.dir))
    print(f"# {os.cpu_count()} CPUs, {total / 2**30:.2f} GiB per dtype, {rounds} round(s), in {workdir}")
    print(
        "| dtype | rounds x tensors | raw write GB/s | tracespec write GB/s | write ratio "
        "| write, stats given GB/s | ratio | raw read GB/s | tracespec read GB/s | read ratio "
        "| direct I/O: write ratio | read ratio |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    ok = True
    per_round: list[str] = []
    try:
        for name in DTYPES:
            r = bench_dtype(name, total, rounds, workdir)
            write, given = (
                median_ratio(r, "tracespec_write", "raw_write"),
                median_ratio(r, "tracespec_stats_given_write", "raw_write"),
            )
            read = median_ratio(r, "tracespec_read", "raw_read")
            direct_write, direct_read = (
                median_ratio(r, "tracespec_direct_write", "raw_write"),
                median_ratio(r, "tracespec_direct_read", "raw_read"),
            )
            ok &= write >= 0.7 and read >= 0.7
            best = {k: max(v) / 1e9 for k, v in r.items()}
            print(
                f"| {name} | {len(r['raw_write'])} x {int(r['tensors'][0])} | {best['raw_write']:.2f} "
                f"| {best['tracespec_write']:.2f} | **{write:.2f}** | {best['tracespec_stats_given_write']:.2f} | {given:.2f} "
                f"| {best['raw_read']:.2f} | {best['tracespec_read']:.2f} | **{read:.2f}** "
                f"| {direct_write:.2f} | {direct_read:.2f} |",
                flush=True,
            )
            for kind in ("write", "read"):
                ratios = [t / b for t, b in zip(r[f"tracespec_{kind}"], r[f"raw_{kind}"])]
                per_round.append(f"# {name} {kind} ratio per round: {' '.join(f'{x:.2f}' for x in ratios)}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print("\n".join(per_round))
    print(f"# target (ratios >= 0.70): {'met' if ok else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
