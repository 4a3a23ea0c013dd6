"""Recording overhead: forward+backward of a GPT-2-small-sized model, bare vs recorded.

For each capture level and each publication mode (``publish="step"``, the default: a step is
durable when ``rec.step()`` returns; ``"async"``: its writing overlaps the next step) it prints
the median step time and its ratio to the bare step (measured in the same run, interleaved), the
bytes written per step, and for ``full`` the machine's own limit, measured in the same run: the
bare step plus one copy of the same bytes into already-faulted memory, or the time the disk takes
to write them with direct I/O, whichever is longer (:func:`limit_seconds`).

``--one-shot`` times what a user debugging does first: one step recorded with the default options
(every role), timed whole, against a bare step; ``--framework onnxruntime`` does the same for the
model's forward exported to ONNX (one feed; the bare run makes its session too).

    flock /tmp/tracespec-bench.lock .venv/bin/python bench/bench_record.py            # full size, 5 rounds
    flock /tmp/tracespec-bench.lock .venv/bin/python bench/bench_record.py --one-shot --rounds 3
    flock /tmp/tracespec-bench.lock .venv/bin/python bench/bench_record.py --one-shot --framework onnxruntime --levels full
    .venv/bin/python bench/bench_record.py --quick                                    # seconds
    flock /tmp/tracespec-bench.lock .venv/bin/python bench/bench_record.py --framework paddle
    flock /tmp/tracespec-bench.lock .venv/bin/python bench/bench_record.py --compiled     # torch.compile'd
    flock /tmp/tracespec-bench.lock .venv/bin/python bench/bench_record.py --levels stats,full,stats+ops,full+ops

A level ``<capture>+ops`` records with ``ops=True`` too: every functional op of the forward code
(the attention's split, views, transposes, the residual adds) as well as the modules.

Frameworks plug in through ``FRAMEWORKS`` (``--framework``): a function that builds the model
and returns ``(model, step)`` where ``step()`` runs one forward+backward.

``--compiled`` runs the torch model through ``torch.compile`` (Inductor): the bare baseline is the
compiled model, in the same run. Recording resets compiled code when it starts and when it ends,
so each recording compiles again within its untimed first steps, and each bare step follows an
untimed step that compiles the model again. With the default roles (gradients recorded) the
recorded forward runs one compiled piece per module; with ``--roles input,output`` it is recorded
inside its compiled graph (see docs/recording.md, "Compiled models"):

    flock /tmp/tracespec-bench.lock .venv/bin/python bench/bench_record.py --compiled --roles input,output
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import mmap
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import tracespec


@dataclass(frozen=True)
class Size:
    layers: int
    width: int
    heads: int
    mlp: int
    vocab: int
    seq: int
    batch: int


FULL = Size(layers=12, width=768, heads=12, mlp=3072, vocab=50257, seq=128, batch=4)
QUICK = Size(layers=2, width=256, heads=4, mlp=1024, vocab=5000, seq=64, batch=2)


# ---------------------------------------------------------------------------------- torch
def torch_model(size: Size, threads: int, compiled: bool = False) -> tuple[Any, Callable[[], None]]:
    import torch
    from torch import nn

    torch.set_num_threads(threads)
    torch.manual_seed(0)

    class Attention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c_attn = nn.Linear(size.width, 3 * size.width)
            self.c_proj = nn.Linear(size.width, size.width)
            self.attn_dropout = nn.Dropout(0.0)
            self.resid_dropout = nn.Dropout(0.0)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b, t, c = x.shape
            q, k, v = (a.view(b, t, size.heads, c // size.heads).transpose(1, 2) for a in self.c_attn(x).split(c, dim=2))
            y = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
            return self.resid_dropout(self.c_proj(y.transpose(1, 2).reshape(b, t, c)))

    class MLP(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c_fc = nn.Linear(size.width, size.mlp)
            self.act = nn.GELU(approximate="tanh")
            self.c_proj = nn.Linear(size.mlp, size.width)
            self.dropout = nn.Dropout(0.0)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.dropout(self.c_proj(self.act(self.c_fc(x))))

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ln_1 = nn.LayerNorm(size.width)
            self.attn = Attention()
            self.ln_2 = nn.LayerNorm(size.width)
            self.mlp = MLP()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = x + self.attn(self.ln_1(x))
            return x + self.mlp(self.ln_2(x))

    class GPT2(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.wte = nn.Embedding(size.vocab, size.width)
            self.wpe = nn.Embedding(1024, size.width)
            self.h = nn.ModuleList(Block() for _ in range(size.layers))
            self.ln_f = nn.LayerNorm(size.width)
            self.lm_head = nn.Linear(size.width, size.vocab, bias=False)
            self.lm_head.weight = self.wte.weight

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            x = self.wte(ids) + self.wpe(torch.arange(ids.shape[1]))
            for block in self.h:
                x = block(x)
            return self.lm_head(self.ln_f(x))  # type: ignore[no-any-return]

    model: nn.Module = GPT2()
    if compiled:
        model = torch.compile(model)  # type: ignore[assignment]
    ids = torch.randint(0, size.vocab, (size.batch, size.seq))
    targets = torch.randint(0, size.vocab, (size.batch, size.seq))

    def step() -> None:
        logits = model(ids)
        loss = nn.functional.cross_entropy(logits.view(-1, size.vocab), targets.view(-1))
        loss.backward()
        model.zero_grad(set_to_none=True)

    return model, step


# ---------------------------------------------------------------------------------- paddle
def paddle_model(size: Size, threads: int) -> tuple[Any, Callable[[], None]]:
    """The same GPT-2 in Paddle: same layers, names and sizes; lm_head tied to wte."""
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))  # read when Paddle starts its pool
    import paddle
    from paddle import nn

    paddle.base.core.set_num_threads(threads)
    paddle.set_device("cpu")
    paddle.seed(0)

    class Attention(nn.Layer):
        def __init__(self) -> None:
            super().__init__()
            self.c_attn = nn.Linear(size.width, 3 * size.width)
            self.c_proj = nn.Linear(size.width, size.width)
            self.attn_dropout = nn.Dropout(0.0)
            self.resid_dropout = nn.Dropout(0.0)

        def forward(self, x: paddle.Tensor) -> paddle.Tensor:
            b, t, c = x.shape
            q, k, v = (a.reshape([b, t, size.heads, c // size.heads]) for a in paddle.split(self.c_attn(x), 3, axis=2))
            y = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)  # [b, t, heads, head]
            return self.resid_dropout(self.c_proj(y.reshape([b, t, c])))

    class MLP(nn.Layer):
        def __init__(self) -> None:
            super().__init__()
            self.c_fc = nn.Linear(size.width, size.mlp)
            self.act = nn.GELU(approximate=True)
            self.c_proj = nn.Linear(size.mlp, size.width)
            self.dropout = nn.Dropout(0.0)

        def forward(self, x: paddle.Tensor) -> paddle.Tensor:
            return self.dropout(self.c_proj(self.act(self.c_fc(x))))

    class Block(nn.Layer):
        def __init__(self) -> None:
            super().__init__()
            self.ln_1 = nn.LayerNorm(size.width)
            self.attn = Attention()
            self.ln_2 = nn.LayerNorm(size.width)
            self.mlp = MLP()

        def forward(self, x: paddle.Tensor) -> paddle.Tensor:
            x = x + self.attn(self.ln_1(x))
            return x + self.mlp(self.ln_2(x))

    class TiedHead(nn.Layer):
        """lm_head sharing wte's [vocab, width] weight (a Paddle Linear would want [width, vocab])."""

        def __init__(self, weight: paddle.Tensor) -> None:
            super().__init__()
            self.weight = weight

        def forward(self, x: paddle.Tensor) -> paddle.Tensor:
            return paddle.matmul(x, self.weight, transpose_y=True)

    class GPT2(nn.Layer):
        def __init__(self) -> None:
            super().__init__()
            self.wte = nn.Embedding(size.vocab, size.width)
            self.wpe = nn.Embedding(1024, size.width)
            self.h = nn.LayerList([Block() for _ in range(size.layers)])
            self.ln_f = nn.LayerNorm(size.width)
            self.lm_head = TiedHead(self.wte.weight)

        def forward(self, ids: paddle.Tensor) -> paddle.Tensor:
            x = self.wte(ids) + self.wpe(paddle.arange(ids.shape[1]))
            for block in self.h:
                x = block(x)
            return self.lm_head(self.ln_f(x))  # type: ignore[no-any-return]

    model = GPT2()
    ids = paddle.randint(0, size.vocab, [size.batch, size.seq])
    targets = paddle.randint(0, size.vocab, [size.batch, size.seq])

    def step() -> None:
        logits = model(ids)
        loss = nn.functional.cross_entropy(logits.reshape([-1, size.vocab]), targets.reshape([-1]))
        loss.backward()
        model.clear_gradients(set_to_zero=False)

    return model, step


FRAMEWORKS: dict[str, Callable[[Size, int], tuple[Any, Callable[[], None]]]] = {"torch": torch_model, "paddle": paddle_model}


# ---------------------------------------------------------------------------------- measuring
def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def bare_step(step: Callable[[], None]) -> tuple[float, float]:
    """Wall and CPU (all threads of this process) seconds of one step."""
    start, cpu = time.perf_counter(), time.process_time()
    step()
    return time.perf_counter() - start, time.process_time() - cpu


def recorded_steps(
    model: Any, step: Callable[[], None], kind: str, folder: Path, roles: list[str], steps: int, warmup: int = 1
) -> tuple[float, float, int]:
    """``steps`` recorded steps of ``kind`` (``level`` or ``level/async``): the wall and CPU time
    and the bytes written per step.

    ``warmup`` first recorded steps (trace set-up, first touch of buffers, compiling) are not
    timed. The timed steps include ``rec.step()`` and, after the last, waiting until everything
    handed to the writer is on disk (fsynced), so background writing is paid for, not hidden:
    what ``async`` saves is only the overlap of one step's writing with the next step's compute.
    """
    level, _, publish = kind.partition("/")
    path = folder / f"trace-{level}-{publish or 'step'}"
    shutil.rmtree(path, ignore_errors=True)
    capture, _, extra = level.partition("+")
    rec = tracespec.record(model, path, capture=capture, roles=roles, ops=extra == "ops", publish=publish or "step")
    rec.__enter__()
    for _ in range(warmup):
        step()
        rec.step()
    rec.flush()
    before = folder_bytes(path)
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step()
        rec.step()
    rec.flush()
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    rec.__exit__(None, None, None)
    written = folder_bytes(path) - before
    shutil.rmtree(path)
    return elapsed / steps, cpu / steps, written // steps


@dataclass(frozen=True)
class OneShot:
    """What ``--one-shot`` times for a framework: ``bare()`` runs the step unrecorded,
    ``recorded(level, path)`` records it with the defaults (every role), each the way a user writes it."""

    bare: Callable[[], None]
    recorded: Callable[[str, Path], None]


def hooked_one_shot(model: Any, step: Callable[[], None]) -> OneShot:
    """PyTorch and Paddle: one ``with tracespec.record(model, path, capture=level)`` around a step."""

    def recorded(level: str, path: Path) -> None:
        with tracespec.record(model, path, capture=level) as rec:
            step()
            rec.step()

    return OneShot(step, recorded)


def onnx_one_shot(size: Size, threads: int, folder: Path) -> OneShot:
    """ONNX Runtime: the benchmark model's forward exported to ONNX (``bench_onnx.py``'s GPT-2,
    its weights in an external file) and one feed. Bare: an ``InferenceSession`` made and run once;
    recorded: ``with tracespec.record(model, path, capture=level) as trace: trace.run(feed)``.
    Both include making the session, as a user's first run does."""
    import onnxruntime as ort
    from bench_onnx import export_model

    dims = {"layers": size.layers, "width": size.width, "heads": size.heads, "hidden": size.mlp, "vocab": size.vocab}
    model = export_model({**dims, "seq": size.seq, "batch": size.batch}, folder)
    feed = {"ids": np.random.default_rng(0).integers(0, size.vocab, (size.batch, size.seq), dtype=np.int64)}

    def session_options() -> Any:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        return options

    def bare() -> None:
        ort.InferenceSession(str(model), session_options(), providers=["CPUExecutionProvider"]).run(None, feed)

    def recorded(level: str, path: Path) -> None:
        with tracespec.record(
            model, path, capture=level, providers=["CPUExecutionProvider"], session_options=session_options()
        ) as trace:
            trace.run(feed)

    return OneShot(bare, recorded)


def one_shot(run: OneShot, level: str, folder: Path) -> tuple[float, float, int]:
    """What a user debugging does: one step with the default options (every role), timed whole,
    from entering the recording to leaving it with the trace written and durable. Wall and CPU
    seconds, and the bytes written."""
    path = folder / f"one-shot-{level}"
    shutil.rmtree(path, ignore_errors=True)
    start, cpu = time.perf_counter(), time.process_time()
    run.recorded(level, path)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    written = folder_bytes(path)
    shutil.rmtree(path)
    return elapsed, cpu, written


def run_one_shot(run: OneShot, levels: list[str], folder: Path, rounds: int) -> None:
    """``--one-shot``: per round, a bare step and one recorded step per level, alternating, and
    the machine's limit for the same bytes measured in the same round (:func:`limit_seconds`)."""
    ratios: dict[str, list[float]] = {level: [] for level in levels}
    cpu_ratios: dict[str, list[float]] = {level: [] for level in levels}
    seconds: dict[str, list[float]] = {level: [] for level in levels}
    written: dict[str, int] = {}
    limits: dict[str, list[float]] = {level: [] for level in levels}
    bare_all: list[float] = []
    rates: list[tuple[float, float]] = []
    for round_ in range(rounds):
        for level in levels:
            gc.collect()
            bare, bare_cpu = bare_step(run.bare)
            elapsed, cpu, nbytes = one_shot(run, level, folder)
            bare_all.append(bare)
            seconds[level].append(elapsed)
            ratios[level].append(elapsed / bare)
            cpu_ratios[level].append(cpu / bare_cpu)
            written[level] = nbytes
        # The bytes each level reads are the tensors full writes (the same records, the same
        # repeats referenced); without full in the run, the bytes the level wrote.
        summarised = written.get("full", 0)
        copy_rate, write_rate = memory_copy_rate(folder), direct_write_rate(folder)
        rates.append((copy_rate, write_rate))
        for level in levels:
            limits[level].append(
                limit_seconds(bare_all[-1], summarised or written[level], level == "full", copy_rate, write_rate) / bare_all[-1]
            )
        print(
            f"round {round_ + 1}: bare {bare_all[-1]:.3f}s " + " ".join(f"{lv} {seconds[lv][-1]:.3f}s" for lv in levels),
            file=sys.stderr,
        )
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    copy_rate, write_rate = (statistics.median(r[i] for r in rates) for i in (0, 1))
    print(
        f"\none step with the defaults (every role), timed whole; bare {statistics.median(bare_all):.3f} s "
        f"(median); x bare = median of per-round ratios; memory copy {copy_rate / 1e9:.1f} GB/s, direct-I/O write "
        f"{write_rate / 1e9:.2f} GB/s; load average at the end {load}"
    )
    print("| capture | timed whole (s) | x bare | x bare, CPU time | MB written | limit, x bare |")
    print("|---|---|---|---|---|---|")
    for level in levels:
        print(
            f"| {level} | {statistics.median(seconds[level]):.3f} | {statistics.median(ratios[level]):.2f} "
            f"| {statistics.median(cpu_ratios[level]):.2f} | {written[level] / 1e6:.1f} | {statistics.median(limits[level]):.2f} |"
        )


def limit_seconds(bare: float, nbytes: int, writes: bool, copy_rate: float, write_rate: float) -> float:
    """What the machine allows for a step that reads ``nbytes`` of tensors (and, if ``writes``,
    writes them): the bare step plus one copy of the bytes in memory, or the time the disk
    takes to write them with direct I/O while the step runs, whichever is longer."""
    limit = bare + nbytes / copy_rate
    return max(limit, nbytes / write_rate) if writes else limit


_RATE_BYTES = 512 << 20  # larger than the last-level cache: the copy goes to memory


def memory_copy_rate(folder: Path) -> float:
    """Bytes per second of one copy into already-faulted memory (one thread, numpy's copy)."""
    source = np.ones(_RATE_BYTES, dtype=np.uint8)
    target = np.zeros(_RATE_BYTES, dtype=np.uint8)
    best = math.inf
    for _ in range(3):
        start = time.perf_counter()
        np.copyto(target, source)
        best = min(best, time.perf_counter() - start)
    return _RATE_BYTES / best


def direct_write_rate(folder: Path, threads: int = 4) -> float:
    """Bytes per second of writing to ``folder`` with direct I/O, from page-aligned memory, on
    ``threads`` threads (each its own file, 8 MiB a write, fsynced), as the recorders' writer does."""
    chunk = 8 << 20
    buffer = mmap.mmap(-1, chunk)  # page-aligned, as O_DIRECT requires
    buffer.write(b"\xa5" * chunk)
    per_thread = _RATE_BYTES // threads

    def write(index: int) -> None:
        path = folder / f"direct-{index}.bin"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_DIRECT", 0), 0o600)
        try:
            for _ in range(per_thread // chunk):
                os.write(fd, buffer)
            os.fsync(fd)
        finally:
            os.close(fd)
            path.unlink()

    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(write, range(threads)))
    return per_thread // chunk * chunk * threads / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--framework", choices=sorted([*FRAMEWORKS, "onnxruntime"]), default="torch", help="onnxruntime: --one-shot only"
    )
    parser.add_argument(
        "--compiled", action="store_true", help="torch.compile the model (torch only); the bare step is compiled too"
    )
    parser.add_argument("--quick", action="store_true", help="a small model, for development")
    parser.add_argument(
        "--rounds", type=int, default=5, help="rounds of (bare, each level and publication); medians are reported"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--levels", default="stats,hash,full", help="capture levels, each optionally with +ops (stats+ops)")
    parser.add_argument("--publish", default="step,async", help="publication modes to measure (record(publish=...))")
    parser.add_argument("--steps", type=int, default=2, help="consecutive recorded steps timed per level and round")
    parser.add_argument(
        "--roles",
        default="input,output,grad_output,grad_input",
        help="roles recorded (default: module inputs, outputs and their gradients; 'all' for every role)",
    )
    parser.add_argument("--folder", type=Path, default=None, help="where traces are written (default: a temp folder in .)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results as JSON")
    parser.add_argument(
        "--one-shot",
        action="store_true",
        help="what a user does first: one step recorded with the defaults (every role), timed whole, next to a bare "
        "step and the machine's limit for the same bytes",
    )
    args = parser.parse_args(argv)
    size = QUICK if args.quick else FULL
    levels = [
        level if publish == "step" else f"{level}/{publish}"
        for publish in args.publish.split(",")
        for level in args.levels.split(",")
    ]
    roles = ["inputs", "outputs", "grads", "params", "optimizer"] if args.roles == "all" else args.roles.split(",")
    if args.compiled and args.framework != "torch":
        parser.error("--compiled is for --framework torch (Paddle's to_static models are not recorded)")
    if args.framework == "onnxruntime":
        if not args.one_shot:
            parser.error("--framework onnxruntime is for --one-shot (steady state: bench/bench_onnx.py)")
        folder = Path(tempfile.mkdtemp(prefix="bench-record-", dir=args.folder or Path.cwd()))
        try:
            run_one_shot(onnx_one_shot(size, args.threads, folder), args.levels.split(","), folder, args.rounds)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return 0
    model, step = (
        torch_model(size, args.threads, compiled=True) if args.compiled else FRAMEWORKS[args.framework](size, args.threads)
    )
    # a compiled model: compiling, and the recompiles Dynamo makes at a second call, stay out of the timing
    warmup = 2 if args.compiled else 1
    label = f"{args.framework}{' compiled' if args.compiled else ''}"
    folder = Path(tempfile.mkdtemp(prefix="bench-record-", dir=args.folder or Path.cwd()))
    if args.one_shot:
        try:
            for _ in range(warmup):
                step()
            run_one_shot(hooked_one_shot(model, step), args.levels.split(","), folder, args.rounds)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return 0
    print(
        f"{label}, {size}, {args.threads} threads, {args.rounds} rounds of {args.steps} recorded steps, roles {roles}",
        file=sys.stderr,
    )
    bare: list[float] = []
    bare_cpu: list[float] = []
    recorded: dict[str, list[float]] = {level: [] for level in levels}
    ratios: dict[str, list[float]] = {level: [] for level in levels}
    cpu_ratios: dict[str, list[float]] = {level: [] for level in levels}
    written: dict[str, list[int]] = {level: [] for level in levels}
    limit: list[float] = []  # per round, for full: limit_seconds of its bytes
    try:
        for _ in range(warmup):
            step()
        for round_ in range(args.rounds):
            # Bare and recorded steps alternate within a round and each level is compared with
            # the bare step of its own round: load from other processes hits both alike. The
            # order turns each round, so what one kind of step leaves behind (a gigabyte of
            # buffers freed, a trace deleted) does not always fall on the same next one.
            order = ["bare", *levels]
            order = order[round_ % len(order) :] + order[: round_ % len(order)]
            timings: dict[str, tuple[float, float, int]] = {}
            for kind in order:
                gc.collect()
                if kind == "bare":
                    if args.compiled:
                        for _ in range(warmup):
                            step()  # a recording's end reset the compiled code
                    timings[kind] = (*bare_step(step), 0)
                    continue
                timings[kind] = recorded_steps(model, step, kind, folder, roles, args.steps, warmup)
            bare.append(timings["bare"][0])
            if "full" in timings:  # the machine's limit for the bytes modules alone write
                limit.append(
                    limit_seconds(bare[-1], timings["full"][2], True, memory_copy_rate(folder), direct_write_rate(folder))
                )
            bare_cpu.append(timings["bare"][1])
            for level in levels:
                elapsed, cpu, nbytes = timings[level]
                recorded[level].append(elapsed)
                ratios[level].append(elapsed / bare[-1])
                cpu_ratios[level].append(cpu / bare_cpu[-1])
                written[level].append(nbytes)
            print(
                f"round {round_ + 1} ({', '.join(order)}): bare {bare[-1]:.3f}s "
                + " ".join(f"{lv} {t[-1]:.3f}s" for lv, t in recorded.items()),
                file=sys.stderr,
            )
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    bare_s = statistics.median(bare)
    rows = []
    for level in levels:
        row: dict[str, Any] = {
            "level": level,
            "step_s": statistics.median(recorded[level]),
            "ratio": statistics.median(ratios[level]),
            "best_ratio": min(recorded[level]) / min(bare),
            "cpu_ratio": statistics.median(cpu_ratios[level]),
            "bytes_per_step": int(statistics.median(written[level])),
        }
        if level.partition("/")[0] == "full" and limit:  # either publication mode writes the same bytes
            row["limit_s"] = statistics.median(limit)
            row["ratio_to_limit"] = row["step_s"] / row["limit_s"]
        rows.append(row)
    name = "quick" if args.quick else "GPT-2 small"
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(
        f"\n{label} {name}, roles {args.roles}: bare step {bare_s:.3f} s (median of {len(bare)}, best {min(bare):.3f} s); "
        "x bare = median of per-round ratios; best = best recorded step / best bare step (noise only ever adds time); "
        f"CPU time: of all this process's threads; load average at the end {load}"
    )
    print(
        "| capture (/publish) | step (s) | x bare | x bare, best | x bare, CPU time | MB written / step | limit (s) | x limit |"
    )
    print("|---|---|---|---|---|---|---|---|")
    print(f"| bare | {bare_s:.3f} | 1.00 | 1.00 | 1.00 | - | - | - |")
    for row in rows:
        lim = f"{row['limit_s']:.3f} | {row['ratio_to_limit']:.2f}" if "limit_s" in row else "- | -"
        print(
            f"| {row['level']} | {row['step_s']:.3f} | {row['ratio']:.2f} | {row['best_ratio']:.2f} | {row['cpu_ratio']:.2f} "
            f"| {row['bytes_per_step'] / 1e6:.1f} | {lim} |"
        )
    if args.json:
        args.json.write_text(
            json.dumps(
                {"framework": args.framework, "compiled": args.compiled, "size": size.__dict__, "bare_s": bare_s, "rows": rows},
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
