"""``tracespec convert padiff|checkpoint``: turn what people already have into traces."""

from __future__ import annotations

import json

import click

from tracespec.cli.errors import report_errors
from tracespec.convert import convert_checkpoint, convert_padiff


@click.group()
def convert() -> None:
    """Convert PaDiff dumps and model checkpoints into traces.

    \b
    Examples:
      tracespec convert padiff padiff_dump/torch_mlp runs/torch_mlp
      tracespec convert checkpoint model.safetensors runs/model
    """


@convert.command()
@click.argument("dump", type=click.Path(exists=True, file_okay=False, path_type=str))
@click.argument("out", type=click.Path(path_type=str))
@click.option(
    "--update-weights",
    type=click.Path(exists=True, file_okay=False, path_type=str),
    help="A second dump folder of the same model with weights.json written after optimizer.step() "
    "(same step_N/rank_M layout); it becomes stage 'update'.",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing trace at OUT.")
@click.option("--json", "as_json", is_flag=True, help="Print the provenance (manifest 'source') as JSON on stdout.")
def padiff(dump: str, out: str, update_weights: str | None, overwrite: bool, as_json: bool) -> None:
    """Convert the PaDiff dump of one model, DUMP (<dump root>/<model name>), into the trace OUT.

    Reads every PaDiff layout (step_N/rank_M/, step_N/, auto_diff/, PaDiffGuard) and generation.
    A partial dump (a crashed PaDiff run) converts what exists; what is missing is printed and
    kept in the manifest's 'source'.

    \b
    Example:
      tracespec convert padiff padiff_dump/paddle_mlp runs/paddle_mlp \\
          --update-weights post_step_weights/paddle_mlp
    """
    with report_errors():
        result = convert_padiff(dump, out, update_weights=update_weights, overwrite=overwrite)
    if as_json:
        click.echo(json.dumps(result.source, indent=2))
    else:
        click.echo(result.summary())


@convert.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=str))
@click.argument("out", type=click.Path(path_type=str))
@click.option("--overwrite", is_flag=True, help="Replace an existing trace at OUT.")
def checkpoint(file: str, out: str, overwrite: bool) -> None:
    """Convert the checkpoint FILE (safetensors, PyTorch .pt/.bin, Paddle .pdparams) into a trace.

    Every tensor becomes a parameter record; the module tree follows the dotted names
    ("encoder.layer.0.weight" is slot "weight" of module "encoder.layer.0"). Pickle-based files
    are read by a restricted unpickler that never runs code from the file.

    \b
    Example:
      tracespec convert checkpoint pytorch_model.bin runs/base
    """
    with report_errors():
        result = convert_checkpoint(file, out, overwrite=overwrite)
    size = sum(e.nbytes for e in result.entries)
    click.echo(
        f"{out}: {len(result.entries)} tensors ({size / 1e6:.1f} MB) from {result.format} checkpoint {file}"
        + (f", {len(result.values)} non-tensor values" if result.values else "")
    )
