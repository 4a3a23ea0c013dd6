"""The same diff from a local S3 server and from local disk; and reading a remote store with
tracespec's reader (fsspec, fetched into a cache folder) against zarr's own fsspec store.

A pair of full-capture traces of a GPT-2-like model (``bench_diff.record_pair``: B has one weight
deep in the network nudged) is recorded to local disk, then copied with ``tracespec cp`` to a
moto S3 server started for the run in its own process (over HTTP on localhost, found through
``AWS_ENDPOINT_URL`` as a user's store would be). Measured, each in a fresh child process,
interleaved over ``--rounds`` (medians):

- **diff local**: ``tracespec.compare(A, B, trust_hashes=False)`` on the folders (the baseline);
- **diff s3**: the same on the ``s3://`` URLs (temporary cache: every byte crosses HTTP);
- **read tracespec**: ``load_trace(url)`` and every array read (``Trace.read``);
- **read zarr**: every array of the same stores read by ``zarr`` through ``zarr.storage.FsspecStore``.

It prints seconds, the stored bytes per second, the ratio of each to the local diff, and peak RSS.

    flock /tmp/tracespec-bench.lock .venv/bin/python bench/bench_object_store.py     # a few hundred MB
    .venv/bin/python bench/bench_object_store.py --quick                              # seconds
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_diff import child_diff, record_pair, run_child
from bench_record import QUICK, folder_bytes

PAIR = replace(QUICK, layers=4, width=512, heads=8, mlp=2048, vocab=8000, seq=128, batch=4)
"""A few hundred MB per trace."""
BUCKET = "tracespec-bench"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench-secret", "AWS_DEFAULT_REGION": "us-east-1"}


def child_read_tracespec(urls: list[str]) -> dict[str, Any]:
    from tracespec.storage import load_trace

    total, start = 0, time.perf_counter()
    for url in urls:
        trace = load_trace(url)
        names = {(r["rank"], r["array"]) for r in trace.tensors().select(["rank", "array"]).to_pylist() if r["array"]}
        for rank, name in sorted(names):
            total += trace.read(rank, name).nbytes
    return {"bytes": total, "seconds": time.perf_counter() - start}


def child_read_zarr(urls: list[str]) -> dict[str, Any]:
    import zarr
    from zarr.storage import FsspecStore

    total, start = 0, time.perf_counter()
    for url in urls:
        store = FsspecStore.from_url(f"{url}/rank_0/tensors.zarr", read_only=True)
        root = zarr.open_group(store=store, mode="r")
        for _, group in root.groups():
            for _, array in group.arrays():
                total += array[...].nbytes
    return {"bytes": total, "seconds": time.perf_counter() - start}


def start_s3_server() -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return server, endpoint
        except OSError:
            time.sleep(0.1)
    server.kill()
    raise SystemExit("the moto S3 server did not start")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small model, for development")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", choices=["record", "diff", "read-tracespec", "read-zarr"], help=argparse.SUPPRESS)
    parser.add_argument("paths", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    size = QUICK if args.quick else PAIR
    if args.child == "record":
        print(json.dumps([str(p) for p in record_pair(size, Path(args.paths[0]), args.threads)]))
        return 0
    if args.child == "diff":
        print(json.dumps(child_diff(args.paths, trust_hashes=False)))
        return 0
    if args.child is not None:
        print(json.dumps((child_read_tracespec if args.child == "read-tracespec" else child_read_zarr)(args.paths)))
        return 0

    folder = Path(tempfile.mkdtemp(prefix="tracespec-bench-s3-"))
    server, endpoint = start_s3_server()
    os.environ.update({**CREDENTIALS, "AWS_ENDPOINT_URL": endpoint})
    try:
        import boto3

        from tracespec.storage import copy_trace

        boto3.client("s3").create_bucket(Bucket=BUCKET)
        (a, b), _ = run_child(
            ["--child", "record", *(["--quick"] if args.quick else []), "--threads", str(args.threads), str(folder)], __file__
        )
        local = [a, b]
        remote = [f"s3://{BUCKET}/a", f"s3://{BUCKET}/b"]
        start = time.perf_counter()
        for source, target in zip(local, remote, strict=True):
            copy_trace(source, target)
        upload = time.perf_counter() - start
        sizes = [folder_bytes(Path(p)) for p in local]
        print(
            f"model {size}; traces {sizes[0] / 1e6:.0f} MB + {sizes[1] / 1e6:.0f} MB; "
            f"tracespec cp to S3: {upload:.1f} s ({sum(sizes) / upload / 1e6:.0f} MB/s)",
            flush=True,
        )
        runs = {
            "diff local": ["--child", "diff", *local],
            "diff s3": ["--child", "diff", *remote],
            "read tracespec s3": ["--child", "read-tracespec", *remote],
            "read zarr s3": ["--child", "read-zarr", *remote],
        }
        results: dict[str, list[tuple[dict[str, Any], int]]] = {kind: [] for kind in runs}
        for _ in range(args.rounds):
            for kind, child in runs.items():
                results[kind].append(run_child(child, __file__))
        stored = sum(sizes)
        baseline = statistics.median(r["seconds"] for r, _ in results["diff local"])
        report: dict[str, Any] = {
            "size": vars(size),
            "trace_bytes": sizes,
            "upload_seconds": upload,
            "cpus": os.cpu_count(),
            "load_average": os.getloadavg(),
        }
        print(f"{'':18} {'seconds':>8} {'MB/s':>7} {'x local diff':>12} {'peak RSS':>9}")
        for kind, rows in results.items():
            seconds = statistics.median(r["seconds"] for r, _ in rows)
            peak = max(rss for _, rss in rows)
            report[kind] = {
                "seconds": seconds,
                "mb_per_s": stored / seconds / 1e6,
                "time_vs_local_diff": seconds / baseline,
                "peak_rss_bytes": peak,
            }
            print(f"{kind:18} {seconds:8.2f} {stored / seconds / 1e6:7.0f} {seconds / baseline:12.2f} {peak / 1e9:7.2f} GB")
        same = results["diff local"][0][0]["first"] == results["diff s3"][0][0]["first"]
        print(f"the same verdict from S3 as from disk: {same} (first divergence {results['diff s3'][0][0]['first']})")
        print(json.dumps(report))
    finally:
        server.kill()
        server.wait()
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
