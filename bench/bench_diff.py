"""Diff throughput and peak memory on two full-capture traces of a GPT-2-small-sized model.

Trace B is recorded from the same model, inputs and seed as A, except for a tiny perturbation of
one weight deep in the network (the MLP of the second-to-last block), so the forward diverges only
near the end while the backward diverges almost everywhere: every tensor must be read, and most
go through the full float64 metrics path. The comparison reads every pair (``--read-all``: equal
content hashes are not trusted to skip data).

Measured, each in a fresh child process, interleaved over ``--rounds`` (medians reported):

- **zarr alone**: read every array of both traces with ``zarr`` (the baseline: the same bytes,
  nothing computed);
- **diff**: ``tracespec.compare(A, B, trust_hashes=False)``; and, for information, the default
  (equal hashes skip reading).

It prints the throughput of each (stored bytes of both traces / seconds), the ratio of diff to
zarr alone (target >= 0.5), and each child's peak resident memory (target < 1 GB for the diff).

    flock /tmp/tracespec-bench.lock .venv/bin/python bench/bench_diff.py      # full size (>= 2 GB per trace)
    .venv/bin/python bench/bench_diff.py --quick                               # seconds
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_record import FULL, QUICK, Size, folder_bytes, torch_model

FULL_DIFF = replace(FULL, batch=8)
"""GPT-2 small (12 layers, width 768, vocab 50257), batch 8 x 128 tokens: over 2 GB per trace."""


def record_pair(size: Size, folder: Path, threads: int) -> tuple[Path, Path]:
    """Record A (reference) and B (one weight deep in the network nudged) at capture ``full``."""
    import torch

    import tracespec

    paths = (folder / "a", folder / "b")
    for path, perturb in zip(paths, (False, True)):
        model, step = torch_model(size, threads)
        if perturb:
            weight = model.h[size.layers - 2].mlp.c_fc.weight
            noise = torch.randn(weight.shape, generator=torch.Generator().manual_seed(1))
            with torch.no_grad():
                weight.add_(noise * 1e-4 * weight.abs().mean())
        with tracespec.record(model, path, capture="full", durable=False, overwrite=True) as rec:
            step()
            rec.step()
    return paths


def child_zarr(paths: list[str]) -> dict[str, Any]:
    """Read every array of the traces with zarr alone."""
    import zarr

    total = 0
    start = time.perf_counter()
    for trace in paths:
        for part in sorted(Path(trace).glob("rank_*")):
            root = zarr.open_group(store=str(part / "tensors.zarr"), mode="r")
            for _, group in root.groups():
                for _, array in group.arrays():
                    total += array[...].nbytes
    return {"bytes": total, "seconds": time.perf_counter() - start}


def child_diff(paths: list[str], trust_hashes: bool) -> dict[str, Any]:
    import tracespec

    done = [0]
    start = time.perf_counter()
    verdict = tracespec.compare(paths[0], paths[1], trust_hashes=trust_hashes, progress=lambda d, t: done.__setitem__(0, d))
    seconds = time.perf_counter() - start
    first = verdict.first_divergence
    return {
        "bytes": done[0],
        "seconds": seconds,
        "status": verdict.status,
        "first": None if first is None else f"{first['stage']} {first['a']['route']} ({first['kind']})",
        "units": verdict.summary["units"],
        "diverged": verdict.summary["diverged"],
    }


def run_child(args: list[str], script: str = __file__) -> tuple[dict[str, Any], int]:
    """Run ``script`` (this one) as a child; return its JSON result and its peak RSS in bytes."""
    proc = subprocess.Popen([sys.executable, script, *args], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"child {args[0]} failed with exit code {proc.returncode}")
    return json.loads(out), usage.ru_maxrss * 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small model, for development")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--folder", type=Path, default=None, help="where the traces go (default: a temp folder in /tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the traces")
    parser.add_argument("--child", choices=["record", "zarr", "diff", "diff-trusting"], help=argparse.SUPPRESS)
    parser.add_argument("paths", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    size = QUICK if args.quick else FULL_DIFF
    if args.child == "record":
        a, b = record_pair(size, Path(args.paths[0]), args.threads)
        print(json.dumps([str(a), str(b)]))
        return 0
    if args.child == "zarr":
        print(json.dumps(child_zarr(args.paths)))
        return 0
    if args.child is not None:
        print(json.dumps(child_diff(args.paths, trust_hashes=args.child == "diff-trusting")))
        return 0

    folder = Path(tempfile.mkdtemp(prefix="tracespec-bench-diff-", dir=args.folder or "/tmp"))
    try:
        start = time.perf_counter()
        # recorded in a child: this process stays small, so its children's peak RSS is their own
        # (a forked child's ru_maxrss counts the parent's pages until it execs)
        (a, b), _ = run_child(
            ["--child", "record", *(["--quick"] if args.quick else []), "--threads", str(args.threads), str(folder)]
        )
        a, b = Path(a), Path(b)
        sizes = [folder_bytes(a), folder_bytes(b)]
        print(
            f"model {size}; recorded in {time.perf_counter() - start:.0f} s; "
            f"traces {sizes[0] / 1e9:.2f} GB + {sizes[1] / 1e9:.2f} GB",
            flush=True,
        )
        results: dict[str, list[tuple[dict[str, Any], int]]] = {"zarr": [], "diff": [], "diff-trusting": []}
        for _ in range(args.rounds):
            for kind in results:
                results[kind].append(run_child(["--child", kind, str(a), str(b)]))
        zarr_bytes = results["zarr"][0][0]["bytes"]
        report: dict[str, Any] = {
            "size": vars(size),
            "trace_bytes": sizes,
            "stored_array_bytes": zarr_bytes,
            "cpus": os.cpu_count(),
            "load_average": os.getloadavg(),
        }
        zarr_rate = statistics.median(zarr_bytes / r["seconds"] for r, _ in results["zarr"])
        print(f"{'':16} {'seconds':>8} {'GB/s':>7} {'x zarr':>7} {'peak RSS':>9}")
        for kind, rows in results.items():
            seconds = statistics.median(r["seconds"] for r, _ in rows)
            rate = zarr_bytes / seconds
            peak = max(rss for _, rss in rows)
            report[kind] = {
                "seconds": seconds,
                "gb_per_s": rate / 1e9,
                "ratio_to_zarr": rate / zarr_rate,
                "peak_rss_bytes": peak,
                "detail": rows[0][0],
            }
            print(f"{kind:16} {seconds:8.2f} {rate / 1e9:7.3f} {rate / zarr_rate:7.2f} {peak / 1e9:7.2f} GB")
        diff = results["diff"][0][0]
        print(
            f"diff: {diff['status']}, first divergence {diff['first']}, {diff['diverged']}/{diff['units']} calls diverged;"
            f" read {diff['bytes'] / 1e9:.2f} GB"
        )
        ok = report["diff"]["ratio_to_zarr"] >= 0.5 and report["diff"]["peak_rss_bytes"] < 1e9
        print(f"targets (>= 0.5 x zarr, < 1 GB): {'met' if ok else 'NOT met'}")
        print(json.dumps(report))
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
        else:
            print(f"traces kept in {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
