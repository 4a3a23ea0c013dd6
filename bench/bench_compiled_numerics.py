"""Does recording change what a torch.compile'd model computes? Two ways to record, measured.

The model of ``bench/bench_record.py`` (forward, eval mode), compiled with Inductor, is run
unrecorded (the reference) and then observed in each of these ways, in float32 and bfloat16:

- ``tracespec, every module``: ``tracespec.record``, its hooks kept out of the compiled graphs
  (``torch.compiler.disable``): the model runs as one compiled piece per module call;
- ``tracespec, blocks only``: the same, recording only the transformer blocks
  (``exclude=["h.*.*"]``): one compiled piece per block;
- ``hooks traced into the graph``: forward hooks that Dynamo traces, computing each module
  output's statistics with torch ops inside the graph (the other way the recorder could be
  written; a prototype, not tracespec's code).

For each it prints the compiled pieces one forward runs, whether the output is bit-identical to
the unrecorded compiled output, its relative RMSE against it, and against the eager output: a
recording that sees the compiled model's numerics is close to the first and as far from eager as
the compiled model is.

    .venv/bin/python bench/bench_compiled_numerics.py            # the GPT-2-small size, about a minute of compiling
    .venv/bin/python bench/bench_compiled_numerics.py --quick
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch._inductor.compile_fx import compile_fx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_record import FULL, QUICK, Size, torch_model

import tracespec


class CountedInductor:
    """The Inductor backend, counting the compiled pieces that run."""

    def __init__(self) -> None:
        self.runs = 0

    def __call__(self, graph: torch.fx.GraphModule, example_inputs: list[torch.Tensor]) -> Callable[..., Any]:
        compiled = compile_fx(graph, example_inputs)

        def run(*args: Any) -> Any:
            self.runs += 1
            return compiled(*args)

        return run


def fresh_model(size: Size, threads: int, dtype: torch.dtype) -> nn.Module:
    model, _ = torch_model(size, threads)
    return model.to(dtype).eval()


def compiled_forward(model: nn.Module, ids: torch.Tensor, observe: Callable[[nn.Module], Any] | None) -> tuple[torch.Tensor, int]:
    """The output of ``torch.compile(model)`` (second call: compiled and warm) observed by
    ``observe(compiled)`` (a context manager, or None), and the pieces that call ran."""
    torch.compiler.reset()
    backend = CountedInductor()
    compiled = torch.compile(model, backend=backend)
    with torch.no_grad():
        if observe is None:
            compiled(ids)
            backend.runs = 0
            return compiled(ids), backend.runs
        with observe(compiled):
            compiled(ids)
            backend.runs = 0
            return compiled(ids), backend.runs


def traced_statistics_hooks(model: nn.Module) -> list[torch.Tensor]:
    """Forward hooks that Dynamo traces into the graph: each module output's sum, sum of squares,
    min and max, computed in float32 by torch ops and kept in a list (a side effect Dynamo replays)."""
    kept: list[torch.Tensor] = []

    def hook(module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> None:
        values = output.float()
        kept.append(torch.stack([values.sum(), (values * values).sum(), values.amin(), values.amax()]))

    for module in model.modules():
        module.register_forward_hook(hook)
    return kept


def rel_rmse(a: torch.Tensor, b: torch.Tensor) -> float:
    a64, b64 = a.double(), b.double()
    return float((a64 - b64).square().mean().sqrt() / a64.square().mean().sqrt())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small model, for development")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    size = QUICK if args.quick else FULL
    ids = torch.randint(0, size.vocab, (size.batch, size.seq), generator=torch.Generator().manual_seed(0))
    print(f"torch {torch.__version__}, {'quick' if args.quick else 'GPT-2 small'} forward, Inductor on CPU")
    print("| dtype | observed by | compiled pieces per forward | bit-identical | rel RMSE vs unrecorded compiled | rel RMSE vs eager |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="bench-compiled-numerics-") as folder:
        for dtype in (torch.float32, torch.bfloat16):
            name = str(dtype).removeprefix("torch.")
            with torch.no_grad():
                eager = fresh_model(size, args.threads, dtype)(ids)
            reference, pieces = compiled_forward(fresh_model(size, args.threads, dtype), ids, None)
            print(f"| {name} | nothing (the reference) | {pieces} | - | - | {rel_rmse(eager, reference):.2e} |")
            ways: dict[str, Callable[[nn.Module], Any]] = {
                "tracespec, every module": lambda m: tracespec.record(m, Path(folder) / f"all-{name}", overwrite=True),
                "tracespec, blocks only": lambda m: tracespec.record(m, Path(folder) / f"blocks-{name}", overwrite=True,
                                                                     exclude=["h.*.*"]),
            }
            for way, observe in ways.items():
                output, pieces = compiled_forward(fresh_model(size, args.threads, dtype), ids, observe)
                print(f"| {name} | {way} | {pieces} | {torch.equal(output, reference)} | {rel_rmse(reference, output):.2e} "
                      f"| {rel_rmse(eager, output):.2e} |")
            hooked = fresh_model(size, args.threads, dtype)
            kept = traced_statistics_hooks(hooked)
            output, pieces = compiled_forward(hooked, ids, None)
            assert kept, "the traced hooks ran"
            print(f"| {name} | hooks traced into the graph | {pieces} | {torch.equal(output, reference)} | "
                  f"{rel_rmse(reference, output):.2e} | {rel_rmse(eager, output):.2e} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
