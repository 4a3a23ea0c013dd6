"""Alignment time and memory on two traces that share no names: what a user's diff of a flat
conversion against a hierarchical model costs before any tensor is read.

A is a residual MLP recorded as a module tree (``blocks.7.fc1``: Linear, GELU, Linear, LayerNorm
per block); B is the same computation recorded flat, every call named after its op
(``Gemm_12``, ``Gelu_4``...), with float32 rounding noise in its values, like an export. Both keep
statistics only, as ``capture="stats"`` does. For each size, in a fresh child process:

- **load**: open both traces and arrange their tables (:class:`RankView`), the baseline: what any
  comparison pays to read the metadata;
- **align**: :func:`align_trees`, every leaf call aligned by dataflow (no name is shared);

and it prints seconds, the ratio align / load, the share of A's calls aligned (and aligned with the
call that computes the same thing: ``right``), and the peak memory
the alignment allocates (tracemalloc), per call, which stays flat when memory is linear.
Target: 10,000 calls a side aligned in under 2 s.

    .venv/bin/python bench/bench_align.py                  # 2,500 / 5,000 / 10,000 calls a side
    .venv/bin/python bench/bench_align.py --calls 1000     # seconds
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

FAMILIES_A = (("fc1", "Linear"), ("act", "GELU"), ("fc2", "Linear"), ("norm", "LayerNorm"))
"""One block of A: a route and a PyTorch class per call; B names the same calls after ONNX ops."""
FAMILIES_B = ("Gemm", "Gelu", "Gemm", "LayerNormalization")


def _block_values(rng: np.random.Generator, x: np.ndarray, width: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(input, output, weight) of each call of one block, in order."""
    w1 = rng.standard_normal((width * 2, width)).astype(np.float32) / np.sqrt(width)
    w2 = rng.standard_normal((width, width * 2)).astype(np.float32) / np.sqrt(width * 2)
    h = x @ w1.T
    g = h * 0.5 * (1 + np.tanh(0.79788456 * (h + 0.044715 * h**3)))
    y = x + g @ w2.T
    z = (y - y.mean(-1, keepdims=True)) / (y.std(-1, keepdims=True) + 1e-5)
    return [(x, h, w1), (h, g, None), (g, y, w2), (y, z, None)]


def record(folder: Path, calls: int) -> tuple[Path, Path]:
    from tracespec.testing.synthetic import SyntheticRecorder

    width = 16
    blocks = calls // len(FAMILIES_A)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, width)).astype(np.float32)
    values = []
    for _ in range(blocks):
        block = _block_values(rng, x, width)
        values.append(block)
        x = block[-1][1]
    noise = np.random.default_rng(1)
    paths = (folder / "a", folder / "b")
    for side, path in zip("ab", paths):
        with SyntheticRecorder(path, level="stats") as rec:
            root = rec.module("", "Net" if side == "a" else "Graph")
            with rec.forward(root, values[0][0][0]) as top:
                for i, block in enumerate(values):
                    parent = rec.module(f"blocks.{i}", "Block", parent=root) if side == "a" else root
                    for k, (inp, out, weight) in enumerate(block):
                        if side == "a":
                            node = rec.module(
                                f"blocks.{i}.{FAMILIES_A[k][0]}",
                                FAMILIES_A[k][1],
                                parent=parent,
                                params={"weight": weight} if weight is not None else None,
                            )
                        else:
                            out = out + noise.standard_normal(out.shape).astype(np.float32) * 1e-7 * float(np.abs(out).mean())
                            node = rec.module(
                                f"{FAMILIES_B[k]}_{i}",
                                FAMILIES_B[k],
                                parent=parent,
                                params={"weight": weight.T.copy()} if weight is not None else None,
                            )
                        with rec.forward(node, inp) as call:
                            call.output(out)
                top.output(values[-1][-1][1])
            rec.end_step()
    return paths


def measure(folder: Path) -> dict[str, float]:
    from tracespec.compare.align import align_trees
    from tracespec.compare.view import RankView
    from tracespec.storage import load_trace

    start = time.perf_counter()
    view_a = RankView(load_trace(folder / "a"), 0)
    view_b = RankView(load_trace(folder / "b"), 0)
    load = time.perf_counter() - start
    start = time.perf_counter()
    alignment = align_trees(view_a, view_b)
    align = time.perf_counter() - start
    tracemalloc.start()  # a second run for memory: tracing slows allocation down
    align_trees(view_a, view_b)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    coverage = alignment.call_coverage()
    expected = {
        f"blocks.{i}.{name}": f"{op}_{i}"
        for i in range(coverage["leaf_a"] // len(FAMILIES_A))
        for (name, _), op in zip(FAMILIES_A, FAMILIES_B)
    }
    right = sum(
        1
        for match in alignment.calls
        for (a, _), (b, _) in zip(match.a, match.b)
        if expected.get(view_a.nodes[a].route) == view_b.nodes[b].route
    )
    return {
        "load_s": load,
        "align_s": align,
        "peak_mb": peak / 2**20,
        "fraction_a": coverage["fraction_a"],
        "leaf_a": coverage["leaf_a"],
        "right": right / coverage["leaf_a"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, nargs="+", default=[2500, 5000, 10000], help="leaf calls per side")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(Path(args.child))))
        return
    print(
        f"{'calls/side':>10} {'load s':>8} {'align s':>8} {'align/load':>10} {'aligned A':>9} {'right':>6} {'peak MB':>8} {'KB/call':>8}"
    )
    for calls in args.calls:
        with tempfile.TemporaryDirectory() as tmp:
            record(Path(tmp), calls)
            out = subprocess.run([sys.executable, __file__, "--child", tmp], check=True, capture_output=True, text=True)
            result = json.loads(out.stdout)
        per_call = result["peak_mb"] * 1024 / result["leaf_a"]
        print(
            f"{result['leaf_a']:>10} {result['load_s']:>8.2f} {result['align_s']:>8.2f} "
            f"{result['align_s'] / result['load_s']:>10.2f} {result['fraction_a']:>9.1%} {result['right']:>6.1%} "
            f"{result['peak_mb']:>8.1f} {per_call:>8.1f}"
        )


if __name__ == "__main__":
    main()
