"""Does recording change what a torch.compile'd model computes? The ways to record, measured.

The model of ``bench/bench_record.py`` (forward, eval mode), compiled with Inductor, is run
unrecorded (the reference) and then recorded in each of these ways, in float32 and bfloat16:

- ``in the graph, every module, <level>``: ``tracespec.record`` as it records a compiled model's
  forward by default: its hooks are traced into the compiled code, statistics computed there by
  torch ops (``stats``), tensors handed out of the graph (``hash``, ``full``);
- ``in the graph, blocks only, stats``: the same, recording only the transformer blocks
  (``exclude=["h.*.*"]``);
- ``out of the graph, every module, stats``: the hooks run eagerly between compiled pieces, one
  per module call, as they do in a forward whose gradients are recorded (here: the same forward
  with autograd on and the default roles, which hold the gradients).

For each it prints the compiled pieces one forward runs, the graph breaks
``torch._dynamo.explain`` counts while recording, whether the output is bit-identical to the
unrecorded compiled output, its relative RMSE against it, and against the eager output: a
recording that sees the compiled model's numerics is close to the first and as far from eager as
the compiled model is.

    .venv/bin/python bench/bench_compiled_numerics.py            # the GPT-2-small size, minutes of compiling
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


def compiled_forward(
    model: nn.Module, ids: torch.Tensor, observe: Callable[[nn.Module], Any] | None, grad: bool = False
) -> tuple[torch.Tensor, int, int | None]:
    """The output of ``torch.compile(model)`` (second call: compiled and warm) observed by
    ``observe(compiled)`` (a context manager, or None), with autograd on where ``grad``: the
    output, the compiled pieces that call ran and, while observed, the graph breaks
    ``torch._dynamo.explain`` counts."""
    torch.compiler.reset()
    backend = CountedInductor()
    compiled = torch.compile(model, backend=backend)
    with torch.set_grad_enabled(grad):
        if observe is None:
            compiled(ids)
            backend.runs = 0
            return compiled(ids).detach(), backend.runs, None
        with observe(compiled):
            compiled(ids)
            backend.runs = 0
            output = compiled(ids).detach()
            runs = backend.runs
            breaks = torch._dynamo.explain(model)(ids).graph_break_count
        return output, runs, breaks


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
    print(
        "| dtype | recorded | compiled pieces per forward | graph breaks (explain) | bit-identical | rel RMSE vs unrecorded compiled | rel RMSE vs eager |"
    )
    print("|---|---|---|---|---|---|---|")
    forward = ["inputs", "outputs"]
    with tempfile.TemporaryDirectory(prefix="bench-compiled-numerics-") as folder:
        for dtype in (torch.float32, torch.bfloat16):
            name = str(dtype).removeprefix("torch.")
            with torch.no_grad():
                eager = fresh_model(size, args.threads, dtype)(ids)
            reference, pieces, _ = compiled_forward(fresh_model(size, args.threads, dtype), ids, None)
            print(f"| {name} | nothing (the reference) | {pieces} | - | - | - | {rel_rmse(eager, reference):.2e} |", flush=True)

            def recording(way: str, name: str = name, **options: Any) -> Callable[[nn.Module], Any]:
                return lambda m: tracespec.record(m, Path(folder) / f"{way}-{name}", overwrite=True, **options)

            ways: dict[str, tuple[Callable[[nn.Module], Any], bool]] = {
                **{
                    f"in the graph, every module, {level}": (recording(level, capture=level, roles=forward), False)
                    for level in ("stats", "hash", "full")
                },
                "in the graph, blocks only, stats": (recording("blocks", exclude=["h.*.*"], roles=forward), False),
                "out of the graph, every module, stats": (recording("split"), True),
            }
            for way, (observe, grad) in ways.items():
                output, pieces, breaks = compiled_forward(fresh_model(size, args.threads, dtype), ids, observe, grad)
                print(
                    f"| {name} | {way} | {pieces} | {breaks} | {torch.equal(output, reference)} | "
                    f"{rel_rmse(reference, output):.2e} | {rel_rmse(eager, output):.2e} |",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
