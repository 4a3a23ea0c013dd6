"""Benchmark: diff two checkpoints of about 1 GB each, against reading both files once.

Writes two checkpoints (safetensors, or ``--format pt`` for ``torch.save``'s zip format; every
tensor of B differs from A) to a temporary folder under /tmp, deleted afterwards, then measures
in fresh subprocesses, with the files warm in the page cache:

- ``read``: reading both files once, sequentially, in 16 MiB chunks (the floor for any diff);
- ``diff``: ``tracespec.convert.diff_checkpoints(a, b)`` (edit script + every distance).

Memory is the peak resident set (``VmHWM``, reset after imports through ``/proc/self/clear_refs``)
minus the resident set after imports, so the interpreter and numpy are not counted; mapped file
pages count while they are mapped. Linux only. Targets (issue 7): diff time <= 1.5x read time, and
peak memory above the baseline <= 3x the largest tensor.

    python bench/bench_checkpoint.py --quick     # ~40 MB per file, seconds
    flock /tmp/tracespec-bench.lock python bench/bench_checkpoint.py   # ~1 GB per file
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

_CHILD = r"""
import json, sys, time

def status(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))

mode, a, b = sys.argv[1:4]
import numpy
from tracespec.convert import diff_checkpoints
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak (VmHWM) to the current resident set: imports do not count
baseline = status("VmRSS")
start = time.perf_counter()
if mode == "read":
    buffer = bytearray(16 << 20)
    view = memoryview(buffer)
    for path in (a, b):
        with open(path, "rb", buffering=0) as f:
            while f.readinto(view):
                pass
    detail = None
else:
    diff = diff_checkpoints(a, b)
    detail = diff.summary()
elapsed = time.perf_counter() - start
peak = status("VmHWM")
print(json.dumps({"seconds": elapsed, "peak_above_baseline": peak - baseline, "detail": detail}))
"""


def _layout(hidden: int, layers: int, vocab: int) -> list[tuple[str, tuple[int, ...]]]:
    """A transformer-like state dict: the embedding is the largest tensor, as in real models."""
    shapes: list[tuple[str, tuple[int, ...]]] = [("embed.weight", (vocab, hidden))]
    for i in range(layers):
        p = f"layers.{i}."
        shapes += [
            (p + "attn.q.weight", (hidden, hidden)),
            (p + "attn.k.weight", (hidden, hidden)),
            (p + "attn.v.weight", (hidden, hidden)),
            (p + "attn.o.weight", (hidden, hidden)),
            (p + "norm.weight", (hidden,)),
            (p + "mlp.up.weight", (4 * hidden, hidden)),
            (p + "mlp.down.weight", (hidden, 4 * hidden)),
        ]
    return [*shapes, ("norm.weight", (hidden,))]


def _save(state: dict[str, np.ndarray], path: Path, fmt: str) -> None:
    if fmt == "safetensors":
        from safetensors.numpy import save_file

        save_file(state, str(path))
    else:  # the zip format of torch.save, read by tracespec without torch
        import torch

        torch.save({k: torch.from_numpy(v) for k, v in state.items()}, path)


def _write(folder: Path, fmt: str, hidden: int, layers: int, vocab: int) -> tuple[Path, Path, int, int]:
    rng = np.random.default_rng(0)
    layout = _layout(hidden, layers, vocab)
    a = {k: rng.standard_normal(s, dtype=np.float32) for k, s in layout}
    _save(a, folder / f"a.{fmt}", fmt)
    b = {k: v + np.float32(1e-3) for k, v in a.items()}
    del a
    _save(b, folder / f"b.{fmt}", fmt)
    largest = max(v.nbytes for v in b.values())
    total = sum(v.nbytes for v in b.values())
    return folder / f"a.{fmt}", folder / f"b.{fmt}", largest, total


def _run(mode: str, a: Path, b: Path) -> dict[str, float]:
    out = subprocess.check_output([sys.executable, "-c", _CHILD, mode, str(a), str(b)], text=True)
    return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="~64 MB per file instead of ~1 GB")
    parser.add_argument("--repeat", type=int, default=3, help="measurements per mode (median is reported)")
    parser.add_argument("--format", choices=("safetensors", "pt"), default="safetensors", help="checkpoint format")
    args = parser.parse_args()
    hidden, layers, vocab = (256, 8, 16384) if args.quick else (1024, 18, 32768)
    with tempfile.TemporaryDirectory(prefix="tracespec-bench-", dir="/tmp") as tmp:
        a, b, largest, total = _write(Path(tmp), args.format, hidden, layers, vocab)
        print(
            f"checkpoints: 2 x {total / 1e9:.2f} GB {args.format} float32, {len(_layout(hidden, layers, vocab))} tensors, "
            f"largest tensor {largest / 1e6:.0f} MB; {os.cpu_count()} CPU(s)"
        )
        _run("read", a, b)  # warm the page cache: both modes then read from memory
        results: dict[str, list[dict[str, float]]] = {"read": [], "diff": []}
        for _ in range(args.repeat):
            for mode in ("read", "diff"):
                results[mode].append(_run(mode, a, b))
    summary = {}
    for mode, runs in results.items():
        seconds = statistics.median(r["seconds"] for r in runs)
        peak = max(r["peak_above_baseline"] for r in runs)
        summary[mode] = (seconds, peak)
        print(f"{mode:>5}: {seconds:7.3f} s  ({2 * total / seconds / 1e9:5.2f} GB/s)   peak above baseline {peak / 1e6:8.1f} MB")
    print(f"diff: {results['diff'][0]['detail']}")
    time_ratio = summary["diff"][0] / summary["read"][0]
    memory_ratio = summary["diff"][1] / largest
    print(
        f"time   diff / read-both-files-once = {time_ratio:.2f}x   (target <= 1.5x: {'met' if time_ratio <= 1.5 else 'MISSED'})"
    )
    print(
        f"memory peak above baseline / largest tensor = {memory_ratio:.2f}x   (target <= 3x: {'met' if memory_ratio <= 3 else 'MISSED'})"
    )


if __name__ == "__main__":
    main()
