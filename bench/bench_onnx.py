"""ONNX Runtime bare vs recorded by tracespec, forward only, on a GPT-2-small-sized model.

    python bench/bench_onnx.py            # 12 layers, width 768, 12 heads, MLP 3072, vocab 50257,
                                          # seq 128, batch 4, fp32, 2 ONNX Runtime threads
    python bench/bench_onnx.py --quick    # a small model, for development
    python bench/bench_onnx.py --ort-threads 1   # ONNX Runtime on one core, the other left free

The model is built in PyTorch (random weights), exported once with ``torch.onnx.export`` (the
torch.export-based exporter, external data) to a temporary folder. Times: one subprocess sets up
every mode (bare ``InferenceSession``, or an ``OnnxRecorder``: graph analysis plus the
instrumented session), warms each up, then runs them round-robin so that load from other
processes hits all modes alike; min and median per mode, ratios against the bare run of the same
process. A recorded run writes a complete trace (one step) to a temporary folder on the same
disk. Peak memory: one more subprocess per mode (set-up and two runs), so peaks do not mix.

Targets (issue 5): full capture of every intermediate <= 2x the bare run, statistics only <= 1.3x.
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
from pathlib import Path
from typing import Any

SIZES = {
    "full": {"layers": 12, "width": 768, "heads": 12, "hidden": 3072, "vocab": 50257, "seq": 128, "batch": 4},
    "quick": {"layers": 2, "width": 128, "heads": 4, "hidden": 512, "vocab": 1000, "seq": 32, "batch": 2},
}

# (name, recorder options or None for the bare session). "@tmpfs" modes write the trace to
# /dev/shm: the adapter's own cost, without the disk.
MODES: list[tuple[str, dict[str, Any] | None]] = [
    ("bare", None),
    ("full", {"capture": "full", "parameters": False}),
    ("full@tmpfs", {"capture": "full", "parameters": False}),
    ("full-4steps", {"capture": "full", "parameters": False, "steps": 4}),
    ("stats", {"capture": "stats", "parameters": False}),
    ("hash", {"capture": "hash", "parameters": False}),
    ("full+params", {"capture": "full", "parameters": True}),
    ("stats+params", {"capture": "stats", "parameters": True}),
]
TMPFS = Path("/dev/shm")


def export_model(size: dict[str, int], folder: Path) -> Path:
    import warnings

    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ln_1 = nn.LayerNorm(size["width"])
            self.attn = nn.ModuleDict(
                {"c_attn": nn.Linear(size["width"], 3 * size["width"]), "c_proj": nn.Linear(size["width"], size["width"])}
            )
            self.ln_2 = nn.LayerNorm(size["width"])
            self.mlp = nn.Sequential(
                nn.Linear(size["width"], size["hidden"]), nn.GELU(approximate="tanh"), nn.Linear(size["hidden"], size["width"])
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            batch, seq, width = x.shape
            heads = size["heads"]
            q, k, v = self.attn["c_attn"](self.ln_1(x)).split(width, dim=-1)
            q, k, v = (t.view(batch, seq, heads, width // heads).transpose(1, 2) for t in (q, k, v))
            y = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.attn["c_proj"](y.transpose(1, 2).reshape(batch, seq, width))
            return x + self.mlp(self.ln_2(x))

    class GPT(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.wte = nn.Embedding(size["vocab"], size["width"])
            self.wpe = nn.Embedding(size["seq"], size["width"])
            self.h = nn.ModuleList(Block() for _ in range(size["layers"]))
            self.ln_f = nn.LayerNorm(size["width"])
            self.lm_head = nn.Linear(size["width"], size["vocab"], bias=False)

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            x = self.wte(ids) + self.wpe(torch.arange(ids.shape[1]))
            for block in self.h:
                x = block(x)
            return self.lm_head(self.ln_f(x))

    torch.manual_seed(0)
    model = GPT().eval()
    ids = torch.zeros(size["batch"], size["seq"], dtype=torch.long)
    path = folder / "gpt.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, (ids,), dynamo=True, input_names=["ids"], verbose=False)
        program.save(str(path), external_data=True)
    return path


def _runner(model: Path, size: dict[str, int], mode: str, workdir: Path, threads: int) -> Any:
    """Set up one mode and return a function doing one forward pass (recorded or not)."""
    import numpy as np
    import onnxruntime as ort

    options = dict(MODES)[mode]
    session_options = ort.SessionOptions()
    session_options.intra_op_num_threads = threads
    session_options.inter_op_num_threads = 1
    feed = {"ids": np.random.default_rng(0).integers(0, size["vocab"], (size["batch"], size["seq"]), dtype=np.int64)}
    if options is None:
        session = ort.InferenceSession(str(model), session_options, providers=["CPUExecutionProvider"])
        return lambda: session.run(None, feed)
    from tracespec.adapters.onnxruntime import OnnxRecorder

    options = dict(options)
    steps = options.pop("steps", 1)
    recorder = OnnxRecorder(model, providers=["CPUExecutionProvider"], session_options=session_options, **options)
    runs = iter(range(1 << 30))
    # A new folder per run: deleting the previous trace is not part of recording.
    return lambda: recorder.record([feed] * steps, _trace_dir(workdir, mode) / f"run_{next(runs)}")


def _steps(mode: str) -> int:
    """Inference steps one run of ``mode`` records (into one trace); times are per step."""
    return (dict(MODES)[mode] or {}).get("steps", 1)


def _trace_dir(workdir: Path, mode: str) -> Path:
    return (TMPFS / f"{workdir.name}-{mode}") if mode.endswith("@tmpfs") else workdir / mode


def disk_bandwidth(folder: Path, mib: int = 256) -> float:
    """MiB/s of writing and fsyncing one file in ``folder``: the floor of a durable full capture."""
    block = b"\xa5" * (1 << 20)
    path = folder / "bandwidth.tmp"
    start = time.perf_counter()
    with open(path, "wb") as f:
        for _ in range(mib):
            f.write(block)
        f.flush()
        os.fsync(f.fileno())
    elapsed = time.perf_counter() - start
    path.unlink()
    return mib / elapsed


def measure_time(
    model: Path, size: dict[str, int], modes: list[str], repeats: int, workdir: Path, threads: int
) -> dict[str, Any]:
    """Time every mode in one process, round-robin, so that load from other processes on the
    machine hits all modes alike; the minimum over the repeats is the least disturbed run."""
    runners, setup = {}, {}
    for mode in modes:
        start = time.perf_counter()
        runners[mode] = _runner(model, size, mode, workdir, threads)
        setup[mode] = time.perf_counter() - start
        runners[mode]()  # warm-up
    trace_mib = {
        mode: sum(f.stat().st_size for f in _trace_dir(workdir, mode).rglob("*") if f.is_file()) / (1 << 20) / _steps(mode)
        for mode in modes
        if _trace_dir(workdir, mode).exists()
    }
    times: dict[str, list[float]] = {mode: [] for mode in modes}
    for _ in range(repeats):
        for mode in modes:
            start = time.perf_counter()
            runners[mode]()
            times[mode].append((time.perf_counter() - start) / _steps(mode))
            shutil.rmtree(_trace_dir(workdir, mode), ignore_errors=True)
    return {
        mode: {
            "setup_s": setup[mode],
            "min_s": min(times[mode]),
            "median_s": statistics.median(times[mode]),
            "trace_mib": trace_mib.get(mode, 0.0),
        }
        for mode in modes
    }


def measure_memory(model: Path, size: dict[str, int], mode: str, workdir: Path, threads: int) -> dict[str, Any]:
    """Peak resident memory of a process that sets up one mode and runs it twice."""
    run = _runner(model, size, mode, workdir, threads)
    run()
    run()
    # VmHWM, not ru_maxrss: a child's ru_maxrss starts from its parent's peak at fork.
    status = Path("/proc/self/status").read_text()
    peak_kib = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:"))
    return {"peak_rss_mib": peak_kib / 1024}


def _child(args: list[str]) -> Any:
    output = subprocess.run([sys.executable, __file__, *args], check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a small model, for development")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per mode")
    parser.add_argument("--modes", default=",".join(name for name, _ in MODES), help="comma-separated subset of the modes")
    parser.add_argument("--ort-threads", type=int, default=2, help="ONNX Runtime intra-op threads (default 2)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--child", choices=["time", "memory"], help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    size = SIZES["quick" if args.quick else "full"]
    modes = args.modes.split(",")
    if args.child == "time":
        print(json.dumps(measure_time(Path(args.model), size, modes, args.repeats, Path(args.workdir), args.ort_threads)))
        return
    if args.child == "memory":
        print(json.dumps(measure_memory(Path(args.model), size, modes[0], Path(args.workdir), args.ort_threads)))
        return

    folder = Path(tempfile.mkdtemp(prefix="tracespec-bench-onnx-"))
    quick = ["--quick"] if args.quick else []
    try:
        print(f"exporting the model {size} ...", file=sys.stderr)
        model = export_model(size, folder)
        common = ["--model", str(model), "--workdir", str(folder), "--ort-threads", str(args.ort_threads), *quick]
        print("timing all modes, round-robin ...", file=sys.stderr)
        results = _child(["--child", "time", "--modes", ",".join(modes), "--repeats", str(args.repeats), *common])
        for mode in modes:
            print(f"peak memory: {mode} ...", file=sys.stderr)
            results[mode].update(_child(["--child", "memory", "--modes", mode, *common]))
            shutil.rmtree(_trace_dir(folder, mode), ignore_errors=True)
        bandwidth = disk_bandwidth(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    bare = results.get("bare")
    for result in results.values():
        result["ratio_min"] = result["min_s"] / bare["min_s"] if bare else None
        result["ratio_median"] = result["median_s"] / bare["median_s"] if bare else None
    if args.json:
        print(
            json.dumps(
                {
                    "size": size,
                    "repeats": args.repeats,
                    "ort_threads": args.ort_threads,
                    "disk_mib_s": bandwidth,
                    "results": results,
                },
                indent=1,
            )
        )
        return
    print(f"size: {size}, {args.repeats} timed runs per mode, {args.ort_threads} ONNX Runtime thread(s), {os.cpu_count()} CPUs")
    print(f"disk: {bandwidth:.0f} MiB/s written with fsync; a full trace cannot be written faster than that")
    print(
        f"{'mode':<14}{'min (s)':>9}{'x bare':>8}{'median (s)':>12}{'x bare':>8}{'set-up (s)':>12}{'peak RSS (MiB)':>16}{'trace (MiB)':>13}"
    )
    for mode, r in results.items():
        floor = (
            ""
            if not mode.startswith("full") or "@tmpfs" in mode
            else f"   (disk floor: {bare['min_s'] + r['trace_mib'] / bandwidth:.2f} s)"
            if bare
            else ""
        )
        ratio_min = f"{r['ratio_min']:.2f}" if r["ratio_min"] is not None else "-"
        ratio_median = f"{r['ratio_median']:.2f}" if r["ratio_median"] is not None else "-"
        print(
            f"{mode:<14}{r['min_s']:>9.3f}{ratio_min:>8}{r['median_s']:>12.3f}{ratio_median:>8}"
            f"{r['setup_s']:>12.2f}{r['peak_rss_mib']:>16.0f}{r['trace_mib']:>13.1f}{floor}"
        )


if __name__ == "__main__":
    main()
