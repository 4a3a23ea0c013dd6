"""A diff on Dask: two 4-rank traces of about 1 GB each (and two 1-rank traces of a quarter of that),
in one process and on 1 and 2 local workers.

The traces (kept under ``bench/results/dask_traces``, git-ignored; ``--fresh`` writes them again):
4 ranks of an 8-layer network (1024 x 1024 float32 weights) recorded at ``full`` for 4 steps with
:class:`tracespec.testing.synthetic.SyntheticRecorder`: each step's forward parameters, inputs and
outputs and the updated parameters, about 260 MB per rank. B is A with a rounding-sized relative
noise (1e-7) on every tensor, so every pair differs in its bits and is read and compared (no
content hash agrees), and rank 2's weight of layer 5 is 1e-3 off from step 2 on (the verdict: rank
2, step 2, ``layers.5``). The 1-rank pair is rank 0 of the same recipe, its layer 5 off from step 2
(one task per rank would leave a worker idle: its steps are split).

The large-tensor pair (``--large-mb``, 400 by default: A's and B's tensor together): one step of
an embedding whose weight is the one large tensor (200 MB of float32 on each side, in 64 MiB
chunks), B's with the same rounding-sized noise: one tensor pair, one task, which neither the
ranks nor the steps can split. It is measured in element ranges by the workers (pairs of at least
``SPLIT_BYTES``, 256 MiB: ranges of 64 MiB of A and B together), and, for the figures before this
split, on 1 worker with the pair measured whole (``split_bytes`` above the pair).

Each configuration runs in a fresh child process, interleaved over ``--rounds`` (medians): **one process** (``compare(A, B)``, the
baseline), **1 worker** and **2 workers** (``compare(A, B, client=...)`` on a
``LocalCluster(n_workers=N, threads_per_worker=1)`` that ``tracespec diff --workers N`` starts;
the cluster's start is timed apart and not counted). Printed: seconds, the ratio to 1 worker (target: 2 workers <= 0.65x), the CPU seconds each
worker spent on the diff and the busiest worker's against 1 worker's (the time on cores nobody else
uses: the figure that a loaded machine does not move), the peak resident memory of each worker
process (and of the one process), and whether each verdict's JSON is the one process's, byte for
byte. The page cache is warmed before the first run.

    flock /tmp/tracespec-bench.lock .venv/bin/python bench/bench_dask_diff.py --rounds 5
    .venv/bin/python bench/bench_dask_diff.py --ranks 1 --large-mb 0     # the 1-rank pair only
    .venv/bin/python bench/bench_dask_diff.py --ranks --rounds 5         # the large-tensor pair only
    .venv/bin/python bench/bench_dask_diff.py --steps 1 --width 256      # seconds, a smoke run
    flock /tmp/tracespec-bench.lock .venv/bin/python bench/bench_dask_diff.py --ranks 4 --large-mb 0 --s3

``--s3``: the pairs are copied (``tracespec cp``) to a local S3 server, moto's, started for the run
(HTTP on localhost, found through ``AWS_ENDPOINT_URL`` as a user's store would be: the workers read
the bucket themselves), and diffed from there; the same pairs from local disk are measured too.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

LAYERS = 8
BATCH = 64
ODD_RANK, ODD_LAYER, ODD_STEP = 2, 5, 2
"""The rank (of 4; of 1: rank 0), layer and step from which B's weight is off."""
RESULTS = Path(__file__).resolve().parent / "results" / "dask_traces"
EMBEDDING_WIDTH = 1024
WHOLE = 1 << 62
"""A ``split_bytes`` above any pair: the large pair measured whole, by one task (before the split)."""


def _write(path: Path, *, noisy: bool, steps: int, width: int, ranks: int) -> None:
    """One side: A (``noisy`` False) or B (rounding noise everywhere, rank 2's layer 5 off)."""
    from tracespec.testing.synthetic import SyntheticRecorder

    odd_rank = min(ODD_RANK, ranks - 1)
    for rank in range(ranks):
        noise = np.random.default_rng(1000 + rank)

        def seen(array: np.ndarray, noise: np.random.Generator = noise) -> np.ndarray:
            if not noisy:
                return array
            return (array * (1 + 1e-7 * noise.standard_normal(array.shape))).astype(np.float32)

        rng = np.random.default_rng(rank)
        weights = [(rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32) for _ in range(LAYERS)]
        with SyntheticRecorder(path, level="full", rank=rank, world_size=ranks) as rec:
            net = rec.module("", "Net")
            layers = [rec.module(f"layers.{i}", "Linear", parent=net, params={"weight": seen(w)}) for i, w in enumerate(weights)]
            for step in range(steps):
                h = rng.standard_normal((BATCH, width)).astype(np.float32)
                with rec.forward(net, seen(h)) as outer:
                    for i, layer in enumerate(layers):
                        weight = weights[i]
                        if noisy and (rank, i) == (odd_rank, ODD_LAYER) and step >= ODD_STEP:
                            weight = weight * np.float32(1 + 1e-3)
                        with rec.forward(layer, seen(h)) as inner:
                            h = np.tanh(h @ weight.T).astype(np.float32)
                            inner.output(seen(h))
                    outer.output(seen(h))
                for i, layer in enumerate(layers):  # an update: every weight changes
                    weights[i] = weights[i] - np.float32(1e-3) * rng.standard_normal(weights[i].shape).astype(np.float32)
                    rec.update(layer, {"weight": seen(weights[i])})
                rec.end_step()


def _write_large(path: Path, *, noisy: bool, megabytes: int) -> None:
    """One side of the large-tensor pair: an embedding's weight of ``megabytes`` / 2 MB and a lookup."""
    from tracespec.testing.synthetic import SyntheticRecorder

    rng = np.random.default_rng(0)
    weight = rng.standard_normal((megabytes * 1_000_000 // 8 // EMBEDDING_WIDTH, EMBEDDING_WIDTH), dtype=np.float32)
    if noisy:
        weight *= (1 + 1e-7 * np.random.default_rng(1000).standard_normal(weight.shape, dtype=np.float32)).astype(np.float32)
    tokens = rng.integers(0, weight.shape[0], BATCH)
    with SyntheticRecorder(path, level="full") as rec:
        net = rec.module("", "Net")
        embedding = rec.module("embed", "Embedding", parent=net, params={"weight": weight})
        with rec.forward(net, tokens) as outer, rec.forward(embedding, tokens) as inner:
            outer.output(inner.output(weight[tokens]))
        rec.end_step()


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _peak_rss_mb() -> float:
    """This process's peak resident memory: Linux's ``VmHWM``, which a new program starts afresh
    (``ru_maxrss`` keeps the parent's peak across fork and exec: a child started by a bench that
    had just written the large traces reported the bench's own 700 MB)."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")) / 1024


def _child(a: str, b: str, workers: int, split_bytes: int) -> dict[str, Any]:
    """One measurement (in its own process): the diff's seconds, peak memory, the verdict's digest."""
    from tracespec.compare import compare_traces

    found: dict[str, Any] = {"workers": workers, "split_bytes": split_bytes}
    if workers == 0:
        start, cpu = time.perf_counter(), _cpu_seconds()
        verdict = compare_traces(a, b)
        found["seconds"] = time.perf_counter() - start
        found["cpu_seconds"] = [_cpu_seconds() - cpu]
        found["peak_rss_mb"] = [_peak_rss_mb()]
    else:
        from tracespec.compare.distributed import cluster_client

        start = time.perf_counter()
        with cluster_client(workers) as client:  # what tracespec diff --workers starts
            client.wait_for_workers(workers)
            found["startup_seconds"] = time.perf_counter() - start
            cpu = client.run(_cpu_seconds)
            start, own = time.perf_counter(), _cpu_seconds()
            verdict = compare_traces(a, b, client=client, split_bytes=split_bytes)
            found["seconds"] = time.perf_counter() - start
            found["client_cpu_seconds"] = _cpu_seconds() - own
            found["cpu_seconds"] = [spent - cpu[w] for w, spent in sorted(client.run(_cpu_seconds).items())]
            peaks = client.run(_peak_rss_mb)
            found["peak_rss_mb"] = [peaks[w] for w in sorted(peaks)]
            found["client_peak_rss_mb"] = _peak_rss_mb()
    text = verdict.dumps()
    found["verdict_sha256"] = hashlib.sha256(text.encode()).hexdigest()
    first = verdict.first_divergence or {}
    found["first"] = [first.get("rank"), first.get("step"), (first.get("a") or {}).get("route")]
    return found


def _median(found: list[dict[str, Any]]) -> dict[str, Any]:
    """The round of median seconds, with the median of each figure over the rounds."""
    middle = dict(sorted(found, key=lambda r: r["seconds"])[len(found) // 2])
    for key in ("cpu_seconds", "peak_rss_mb"):
        middle[key] = [statistics.median(r[key][i] for r in found) for i in range(len(found[0][key]))]
    middle["same"] = all(r["verdict_sha256"] == found[0]["verdict_sha256"] for r in found)
    return middle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3, help="each configuration this many times, interleaved (medians)")
    parser.add_argument("--fresh", action="store_true", help="write the traces again")
    parser.add_argument(
        "--ranks", type=int, nargs="*", default=[4, 1], help="the rank counts of the trace pairs measured (default: 4 1)"
    )
    parser.add_argument(
        "--large-mb", type=int, default=400, help="the size of the large-tensor pair, A and B together (0: not measured)"
    )
    parser.add_argument("--s3", action="store_true", help="also diff the pairs from a local S3 server (moto)")
    parser.add_argument("--child", nargs=4, metavar=("A", "B", "WORKERS", "SPLIT_BYTES"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(args.child[0], args.child[1], int(args.child[2]), int(args.child[3]))))
        return
    from tracespec.compare.engine import SPLIT_BYTES

    cases: list[tuple[Path, str, list[tuple[int, int]]]] = []
    for ranks in args.ranks:
        folder = RESULTS / f"r{ranks}_s{args.steps}_w{args.width}"
        if args.fresh or not (folder / "b" / "manifest.json").exists():
            _fresh(folder, functools.partial(_write, steps=args.steps, width=args.width, ranks=ranks))
        cases.append((folder, f"{ranks} rank(s), {args.steps} steps", [(0, SPLIT_BYTES), (1, SPLIT_BYTES), (2, SPLIT_BYTES)]))
    if args.large_mb:
        folder = RESULTS / f"large_{args.large_mb}mb"
        if args.fresh or not (folder / "b" / "manifest.json").exists():
            _fresh(folder, functools.partial(_write_large, megabytes=args.large_mb))
        cases.append((folder, "one tensor pair", [(0, SPLIT_BYTES), (1, WHOLE), (1, SPLIT_BYTES), (2, SPLIT_BYTES)]))
    for folder, what, configurations in cases:
        _case(str(folder / "a"), str(folder / "b"), what, args.rounds, configurations)
    if args.s3:
        _from_s3(cases, args.rounds)


def _from_s3(cases: list[tuple[Path, str, list[tuple[int, int]]]], rounds: int) -> None:
    """The same pairs copied to a local S3 server and diffed from there (the children and the
    workers they start inherit the endpoint and credentials from the environment)."""
    from bench_object_store import CREDENTIALS, start_s3_server

    server, endpoint = start_s3_server()
    os.environ.update({**CREDENTIALS, "AWS_ENDPOINT_URL": endpoint})
    try:
        import boto3

        from tracespec.storage import copy_trace

        boto3.client("s3").create_bucket(Bucket="tracespec-bench")
        for folder, what, configurations in cases:
            urls = [f"s3://tracespec-bench/{folder.name}/{side}" for side in ("a", "b")]
            start = time.perf_counter()
            for side, url in zip(("a", "b"), urls, strict=True):
                copy_trace(folder / side, url)
            print(f"\ntracespec cp of {folder.name} to S3: {time.perf_counter() - start:.1f} s", flush=True)
            _case(urls[0], urls[1], f"{what}, from S3 (moto on this machine)", rounds, configurations)
    finally:
        server.terminate()
        server.wait()


def _fresh(folder: Path, write: Callable[..., None]) -> None:
    """Write A and B (``write(side, noisy=...)``) into ``folder`` afresh."""
    shutil.rmtree(folder, ignore_errors=True)
    start = time.perf_counter()
    write(folder / "a", noisy=False)
    write(folder / "b", noisy=True)
    print(f"wrote A and B in {time.perf_counter() - start:.0f} s", flush=True)


def _name(workers: int, split_bytes: int) -> str:
    if not workers:
        return "one process"
    return f"{workers} worker(s)" + (", pair whole" if split_bytes == WHOLE else "")


def _case(a: str, b: str, what: str, rounds: int, configurations: list[tuple[int, int]]) -> None:
    """Measure the pair A, B (folders or URLs) in each configuration (workers, split_bytes; 0
    workers: one process), interleaved over ``rounds``; ratios against 1 worker (splitting as by
    default)."""
    print(f"\n{what}; load average {os.getloadavg()[0]:.2f}, {os.cpu_count()} cores", flush=True)
    for path in (Path(a), Path(b)):  # the page cache warm for every run alike (local folders)
        if not path.is_dir():
            continue
        print(f"{path}: {_size(path) / 1e9:.2f} GB", flush=True)
        for file in path.rglob("*"):
            if file.is_file():
                with open(file, "rb") as f:  # in pieces: the bench's own memory stays small
                    while f.read(16 << 20):
                        pass
    runs: dict[tuple[int, int], list[dict[str, Any]]] = {configuration: [] for configuration in configurations}
    for round_ in range(rounds):
        for (workers, split_bytes), found in runs.items():
            done = subprocess.run(
                [sys.executable, __file__, "--child", a, b, str(workers), str(split_bytes)],
                capture_output=True,
                text=True,
                check=True,
            )
            found.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(
                f"  round {round_ + 1}, {_name(workers, split_bytes)}: "
                f"{found[-1]['seconds']:.1f} s, CPU s {found[-1]['cpu_seconds']} "
                f"(load average {os.getloadavg()[0]:.2f})",
                flush=True,
            )
    results = [_median(found) for found in runs.values()]
    one = next(r for r in results if r["workers"] == 1 and r["split_bytes"] != WHOLE)
    print(
        f"\n{'':<24} {'seconds':>8} {'vs 1 worker':>12} {'CPU s per process':>18} {'busiest vs 1':>13} "
        f"{'peak RSS per process (MB)':>26}  same verdict"
    )
    for r in results:
        name = _name(r["workers"], r["split_bytes"])
        peaks = ", ".join(f"{p:.0f}" for p in r["peak_rss_mb"])
        cpu = ", ".join(f"{c:.1f}" for c in r["cpu_seconds"])
        same = r["same"] and r["verdict_sha256"] == results[0]["verdict_sha256"]
        print(
            f"{name:<24} {r['seconds']:>8.1f} {r['seconds'] / one['seconds']:>11.2f}x {cpu:>18} "
            f"{max(r['cpu_seconds']) / max(one['cpu_seconds']):>12.2f}x {peaks:>26}  {'yes' if same else 'NO'}"
            + (
                f"  (cluster start {r['startup_seconds']:.1f} s; client {r['client_cpu_seconds']:.1f} CPU s, "
                f"{r['client_peak_rss_mb']:.0f} MB)"
                if r["workers"]
                else ""
            )
        )
    two = results[-1]
    ratios = [f"{r['seconds'] / o['seconds']:.2f}" for r, o in zip(runs[configurations[-1]], runs[(1, one["split_bytes"])])]
    print(
        f"first divergence (rank, step, route): {results[0]['first']}; target 2 workers <= 0.65x of 1: "
        f"{two['seconds'] / one['seconds']:.2f}x in time (rounds: {', '.join(ratios)}), "
        f"{max(two['cpu_seconds']) / max(one['cpu_seconds']):.2f}x "
        "in the busiest worker's CPU seconds (what the time is on cores nobody else uses)"
    )


if __name__ == "__main__":
    main()
