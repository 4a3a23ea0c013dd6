"""Diff throughput on long runs recorded at ``capture="stats"``: record pairs per second, peak memory.

Two cases, each pair of traces diffed in a fresh child process (medians over ``--rounds``):

- **synthetic**: A and B written with :class:`tracespec.storage.TraceWriter` for one step of a
  50-layer network (500 records per step: forward inputs, outputs and parameters, backward
  gradients, the optimizer's update), then tiled to ``--steps`` steps (10,000 by default: 5 M
  record pairs) with statistics that drift from step to step; B carries a rounding-sized noise
  on every statistic (within tolerance) and, from 3/4 of the run on, a 1e-3 relative error in the
  output of one layer and everything downstream of it. Tables are written in segments of
  ``--segment`` steps (100; a recorder today publishes one per step: ``--segment 1``).
- **mlp**: two real PyTorch trainings (a 12-block MLP, Adam, 300 steps) recorded at ``stats``;
  B's weight of block 7 nudged by 1e-4 relative at step 250.

Measured for each: **arrow alone**, every statistics column of both traces' tensor tables read
with pyarrow (the same bytes, nothing compared: the baseline); **diff**, ``tracespec.compare(A, B)``
(the verdict built, JSON included). Printed: seconds, record pairs per second, the ratio of diff to
arrow alone, the diff child's CPU seconds (imports included: the figure that machine load does not
move), and each child's peak resident memory (targets: >= 1 M pairs/s and < 1 GB for the synthetic
case, < 1 s for the MLP).

    flock /tmp/tracespec-bench.lock .venv/bin/python bench/bench_long_diff.py        # 10,000 steps
    .venv/bin/python bench/bench_long_diff.py --steps 500 --rounds 1                  # seconds
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

import numpy as np

LAYERS = 50
WIDTH = 64
BATCH = 8


def _write_one_step(path: Path) -> None:
    """One step of a 50-layer network, statistics only, with the writer the recorders use."""
    from tracespec.format.stats import compute_stats
    from tracespec.storage import TraceWriter

    rng = np.random.default_rng(0)
    with TraceWriter(path, framework="numpy", capture={"level": "stats"}, durable=False, overwrite=True) as writer:
        root = writer.add_node("", "Net")
        layers = [writer.add_node(f"layers.{i}", "Linear", parent=root, position=i) for i in range(LAYERS)]
        counter = 0

        def stats(shape: tuple[int, ...]) -> Any:
            return compute_stats(rng.standard_normal(shape).astype(np.float32))

        def tensor(stage: str, node: int, role: str, slot: str, shape: tuple[int, ...], call: int | None) -> None:
            writer.add_tensor(
                step=0,
                stage=stage,
                node=node,
                role=role,
                slot=slot,
                call=call,
                level="stats",
                stats=stats(shape),
                dtype="float32",
                shape=shape,
            )

        for stage in ("forward", "backward"):
            begin = counter
            order = layers if stage == "forward" else layers[::-1]
            for node in order:
                if stage == "forward":
                    tensor(stage, node, "input", "0", (BATCH, WIDTH), 0)
                    tensor(stage, node, "parameter", "weight", (WIDTH, WIDTH), None)
                    tensor(stage, node, "parameter", "bias", (WIDTH,), None)
                    tensor(stage, node, "output", "0", (BATCH, WIDTH), 0)
                else:
                    tensor(stage, node, "grad_output", "0", (BATCH, WIDTH), 0)
                    tensor(stage, node, "grad_input", "0", (BATCH, WIDTH), 0)
                    tensor(stage, node, "parameter_grad", "weight", (WIDTH, WIDTH), None)
                    tensor(stage, node, "parameter_grad", "bias", (WIDTH,), None)
                writer.add_call(step=0, stage=stage, node=node, call=0, begin=counter + 1, end=counter + 2)
                counter += 2
            writer.add_call(step=0, stage=stage, node=root, call=0, begin=begin, end=counter + 1)
            counter += 2
        for node in layers:
            tensor("update", node, "parameter", "weight", (WIDTH, WIDTH), None)
            tensor("update", node, "parameter", "bias", (WIDTH,), None)
        writer.end_step(0)


def synthetic_pair(folder: Path, steps: int, segment: int) -> tuple[Path, Path]:
    """A and B of ``steps`` steps, tiled from one written step (see the module docstring)."""
    import pyarrow as pa

    from tracespec.format.manifest import PartManifest, Segment
    from tracespec.format.tables import TABLE_SCHEMAS

    template = folder / "template"
    _write_one_step(template)
    part = json.loads((template / "rank_0" / "part.json").read_text())
    tables = {
        name: pa.concat_tables([pa.ipc.open_file(template / "rank_0" / s["path"]).read_all() for s in part["tables"][name]])
        for name in ("nodes", "calls", "tensors")
    }
    calls, tensors = tables["calls"], tables["tensors"]
    per_step, span = tensors.num_rows, int(calls.column("end").to_numpy().max()) + 1
    layer = np.array([int(n) for n in tensors.column("node").to_numpy()])
    culprit = 1 + (3 * LAYERS) // 4  # node id of the layer that goes wrong in B
    downstream = np.isin(np.array(tensors.column("stage").to_pylist()), ["forward"]) & (layer > culprit) | (
        layer == culprit
    ) & np.array([r == "output" for r in tensors.column("role").to_pylist()])
    diverge_at = (3 * steps) // 4
    paths = (folder / "a", folder / "b")
    rng = np.random.default_rng(1)
    for path, is_b in zip(paths, (False, True)):
        shutil.copytree(template, path, dirs_exist_ok=True)
        tables_dir = path / "rank_0" / "tables"
        for old in tables_dir.iterdir():
            old.unlink()
        segments: dict[str, list[Segment]] = {"nodes": [], "calls": [], "tensors": []}

        def write(name: str, table: pa.Table, path: Path = path, segments: dict[str, list[Segment]] = segments) -> None:
            relative = f"tables/{name}-{len(segments[name]):06d}.arrow"
            with pa.ipc.new_file(str(path / "rank_0" / relative), TABLE_SCHEMAS[name]) as out:
                out.write_table(table.cast(TABLE_SCHEMAS[name]))
            segments[name].append(Segment(relative, table.num_rows))

        write("nodes", tables["nodes"])
        drift = np.random.default_rng(2)  # the same drift in A and B: the runs agree until diverge_at
        for first in range(0, steps, segment):
            chunk = range(first, min(first + segment, steps))
            n = len(chunk)
            step_column = np.repeat(np.array(chunk, np.int64), per_step)
            columns = {c: tensors.column(c) for c in tensors.column_names}
            tiled = {c: pa.concat_arrays([columns[c].combine_chunks()] * n) for c in tensors.column_names}
            tiled["step"] = pa.array(step_column)
            tiled["id"] = pa.array(np.arange(first * per_step, (first + n) * per_step, dtype=np.int64))
            factor = 1 + 0.01 * drift.standard_normal((n, per_step))
            if is_b:
                factor = factor * (1 + 1e-9 * rng.standard_normal((n, per_step)))  # rounding noise
                wrong = (np.array(chunk)[:, None] >= diverge_at) & downstream[None, :]
                factor = np.where(wrong, factor * (1 + 1e-3), factor)
            for stat in ("mean", "std", "min", "max", "l2"):
                base = np.tile(columns[stat].to_numpy(), n)
                tiled[stat] = pa.array(base * factor.reshape(-1))
            write("tensors", pa.table(tiled))
            calls_tiled = {c: pa.concat_arrays([calls.column(c).combine_chunks()] * n) for c in calls.column_names}
            offsets = np.repeat(np.arange(first, first + n, dtype=np.int64) * span, calls.num_rows)
            calls_tiled["step"] = pa.array(np.repeat(np.array(chunk, np.int64), calls.num_rows))
            calls_tiled["end"] = pa.array(np.tile(calls.column("end").to_numpy(), n) + offsets)
            calls_tiled["begin"] = pa.array(np.tile(calls.column("begin").to_numpy(), n) + offsets)
            write("calls", pa.table(calls_tiled))
        manifest = PartManifest(
            rank=0,
            device="cpu",
            complete=True,
            steps=tuple(range(steps)),
            tables={k: tuple(v) for k, v in segments.items()},
            store_path=part["store"]["path"],
            store_arrays=0,
            store_bytes=0,
            updated=part["updated"],
        )
        (path / "rank_0" / "part.json").write_text(json.dumps(manifest.to_json(), indent=1))
    shutil.rmtree(template)
    return paths


def mlp_pair(folder: Path, steps: int = 300, nudge_step: int = 250) -> tuple[Path, Path]:
    """Two real trainings of a 12-block MLP with Adam, recorded at ``stats``; B's weight of block 7
    nudged by 1e-4 relative at ``nudge_step`` (docs/benchmarks.md)."""
    import torch

    import tracespec

    paths = (folder / "a", folder / "b")
    for path, nudge in zip(paths, (None, nudge_step)):
        torch.manual_seed(0)
        model = torch.nn.Sequential(*[layer for _ in range(12) for layer in (torch.nn.Linear(16, 16), torch.nn.Tanh())])
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        x = torch.randn(8, 16, generator=torch.Generator().manual_seed(1))
        with tracespec.record(model, path, capture="stats", optimizer=optimizer, durable=False, overwrite=True) as rec:
            for step in range(steps):
                if step == nudge:
                    with torch.no_grad():
                        model[14].weight.mul_(1 + 1e-4)
                optimizer.zero_grad()
                model(x).square().mean().backward()
                optimizer.step()
                rec.step()
    return paths


def child_arrow(paths: list[str]) -> dict[str, Any]:
    """Read every statistics column of both traces' tensor tables with pyarrow alone."""
    import pyarrow as pa

    columns = ["step", "node", "call", "role", "slot", "mean", "std", "min", "max", "l2", "nan_count", "inf_count"]
    start = time.perf_counter()
    rows = 0
    for trace in paths:
        for part in sorted(Path(trace).glob("rank_*")):
            for segment in json.loads((part / "part.json").read_text())["tables"]["tensors"]:
                with pa.memory_map(str(part / segment["path"])) as source:
                    table = pa.ipc.open_file(source).read_all().select(columns)
                    for name in ("mean", "std", "min", "max", "l2"):
                        float(np.nansum(table.column(name).to_numpy()))  # touch every value
                    rows += table.num_rows
    return {"rows": rows, "seconds": time.perf_counter() - start}


def child_diff(paths: list[str]) -> dict[str, Any]:
    import tracespec

    start = time.perf_counter()
    verdict = tracespec.compare(paths[0], paths[1])
    verdict.dumps()
    seconds = time.perf_counter() - start
    first = verdict.first_divergence
    return {
        "seconds": seconds,
        "pairs": verdict.coverage["records_compared"],
        "status": verdict.status,
        "first": None if first is None else f"step {first['step']} {first['stage']} {first['a']['route']} ({first['kind']})",
    }


def run_child(args: list[str]) -> tuple[Any, int]:
    """Run this script as a child; return its JSON result (a measurement gets ``cpu_s``, the child's
    CPU seconds, imports included) and its peak RSS in bytes."""
    proc = subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"child {args[:2]} failed with exit code {os.waitstatus_to_exitcode(status)}")
    result = json.loads(out)
    if isinstance(result, dict):
        result["cpu_s"] = usage.ru_utime + usage.ru_stime
    return result, usage.ru_maxrss * 1024


def measure(name: str, paths: tuple[Path, Path], rounds: int) -> dict[str, Any]:
    arrow, diff, cpu, rss = [], [], [], {"arrow": 0, "diff": 0}
    result: dict[str, Any] = {}
    for _ in range(rounds):  # interleaved, so that drifting machine load hits both alike
        got, peak = run_child(["--child", "arrow", *map(str, paths)])
        arrow.append(got["seconds"])
        rss["arrow"] = max(rss["arrow"], peak)
        result, peak = run_child(["--child", "diff", *map(str, paths)])
        diff.append(result["seconds"])
        cpu.append(result["cpu_s"])
        rss["diff"] = max(rss["diff"], peak)
    seconds, baseline = statistics.median(diff), statistics.median(arrow)
    report = {
        "case": name,
        "pairs": result["pairs"],
        "diff_s": seconds,
        "diff_cpu_s": statistics.median(cpu),
        "arrow_s": baseline,
        "pairs_per_s": result["pairs"] / seconds,
        "diff_over_arrow": seconds / baseline,
        "peak_rss_diff_mb": rss["diff"] / 2**20,
        "peak_rss_arrow_mb": rss["arrow"] / 2**20,
        "load_average": os.getloadavg()[0],
        "status": result["status"],
        "first": result["first"],
    }
    print(
        f"{name}: {report['pairs']:,} record pairs; arrow alone {baseline:.2f} s (peak {report['peak_rss_arrow_mb']:.0f} MB); "
        f"diff {seconds:.2f} s = {report['pairs_per_s'] / 1e6:.2f} M pairs/s, {report['diff_over_arrow']:.1f}x arrow alone, "
        f"{report['diff_cpu_s']:.2f} CPU s with imports (peak {report['peak_rss_diff_mb']:.0f} MB); "
        f"load average {report['load_average']:.1f}; {result['status']}, first divergence {result['first']}"
    )
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10_000, help="steps of the synthetic pair")
    parser.add_argument(
        "--segment",
        type=int,
        default=100,
        help="steps per table segment of the synthetic pair (a recorder writes one per step: 1)",
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--case", choices=["synthetic", "mlp", "both"], default="both")
    parser.add_argument("--folder", type=Path, default=None, help="where the traces go (default: a temp folder in /tmp)")
    parser.add_argument("--child", choices=["arrow", "diff", "synthetic", "mlp"], help=argparse.SUPPRESS)
    parser.add_argument("paths", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child == "arrow":
        print(json.dumps(child_arrow(args.paths)))
        return 0
    if args.child == "diff":
        print(json.dumps(child_diff(args.paths)))
        return 0
    if args.child is not None:
        folder = Path(args.paths[0])
        made = synthetic_pair(folder, args.steps, args.segment) if args.child == "synthetic" else mlp_pair(folder)
        print(json.dumps([str(p) for p in made]))
        return 0

    folder = Path(tempfile.mkdtemp(prefix="tracespec-bench-long-", dir=args.folder or "/tmp"))
    reports = []
    try:
        for case in ["synthetic", "mlp"] if args.case == "both" else [args.case]:
            start = time.perf_counter()
            where = folder / case
            where.mkdir()
            # written in a child: this process stays small, so its children's peak RSS is their own
            made, _ = run_child(["--child", case, "--steps", str(args.steps), "--segment", str(args.segment), str(where)])
            print(f"{case}: traces written in {time.perf_counter() - start:.0f} s", flush=True)
            reports.append(measure(case, (Path(made[0]), Path(made[1])), args.rounds))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(json.dumps(reports))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
