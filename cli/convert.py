"""``tracespec convert padiff|checkpoint``: turn what people already have into traces.

Also the checkpoint side of ``tracespec diff`` (two checkpoint files instead of two traces),
which ``cli/diff.py`` dispatches to.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

import click

from tracespec.cli.errors import EXIT_DIVERGED, report_errors
from tracespec.cli.locations import location_options
from tracespec.convert import convert_checkpoint, convert_padiff, diff_checkpoints
from tracespec.errors import InputFileError


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
@location_options
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
@click.option("--progress/--no-progress", default=None, help="Progress bar on stderr (default: when stderr is a terminal).")
@location_options
def checkpoint(file: str, out: str, overwrite: bool, progress: bool | None) -> None:
    """Convert the checkpoint FILE (safetensors, PyTorch .pt/.bin, Paddle .pdparams) into a trace.

    Every tensor becomes a parameter record; the module tree follows the dotted names
    ("encoder.layer.0.weight" is slot "weight" of module "encoder.layer.0"). Pickle-based files
    are read by a restricted unpickler that never runs code from the file.

    \b
    Example:
      tracespec convert checkpoint pytorch_model.bin runs/base
    """
    show = progress if progress is not None else sys.stderr.isatty()
    with report_errors(), _progress_bar(show, "converting", in_bytes=True) as update:
        result = convert_checkpoint(file, out, overwrite=overwrite, progress=update)
    size = sum(e.nbytes for e in result.entries)
    click.echo(
        f"{out}: {len(result.entries)} tensors ({size / 1e6:.1f} MB) from {result.format} checkpoint {file}"
        + (f", {len(result.values)} non-tensor values" if result.values else "")
    )


# --------------------------------------------------------------------------- tracespec diff FILE FILE

_CHECKPOINT_OPTION_DEFAULTS: Final = {"strip_prefix_a": "", "strip_prefix_b": "", "threshold": 1e-5, "scale": 1.0}
_LINE_COLORS: Final = {"-": "red", "+": "green", "!": "yellow"}


def checkpoint_options(function: Callable[..., Any]) -> Callable[..., Any]:
    """The ``tracespec diff`` options that apply to checkpoint files (allennlp's feature set)."""
    options = [
        click.option(
            "--strip-prefix-a",
            metavar="PREFIX",
            default=None,
            help="Checkpoints: remove PREFIX from A's keys (e.g. 'model.').  [default: none]",
        ),
        click.option(
            "--strip-prefix-b", metavar="PREFIX", default=None, help="Checkpoints: remove PREFIX from B's keys.  [default: none]"
        ),
        click.option(
            "--threshold",
            type=float,
            default=None,
            help="Checkpoints: a tensor whose distance (x scale) is at most this is unchanged.  [default: 1e-05]",
        ),
        click.option(
            "--scale",
            type=float,
            default=None,
            help="Checkpoints: multiply distances by this before display and threshold (to see 1e-6 "
            "differences at 4 decimals, use 1e4).  [default: 1]",
        ),
        click.option("--show-unchanged", is_flag=True, help="Checkpoints: also list unchanged tensors."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def diff_checkpoint_files(a: str, b: str, options: dict[str, Any], json_path: str | None, progress: bool | None) -> int:
    """``tracespec diff`` on two checkpoint files: the edit script, streamed; returns the exit code.

    Lines: ``-key`` only in A, ``+key`` only in B, ``!key`` in both but changed, with shapes and
    the distance ``||a - b|| / sqrt(n) x scale`` (``\u25b3``). Exit 0 if nothing changed, else 1.
    """
    if not (Path(a).is_file() and Path(b).is_file()):
        file, other = (a, b) if Path(a).is_file() else (b, a)
        raise InputFileError(
            f"{file}: a file, not a trace folder, while {other} is not a file; "
            "tracespec diff compares two trace folders or two checkpoint files"
        )

    def setting(key: str) -> Any:
        given = options.get(key)
        return _CHECKPOINT_OPTION_DEFAULTS[key] if given is None else given

    show = progress if progress is not None else (sys.stderr.isatty() and json_path != "-")
    with _progress_bar(show, "comparing tensors", in_bytes=False) as update:
        result = diff_checkpoints(
            a,
            b,
            progress=update,
            strip_prefix_a=setting("strip_prefix_a"),
            strip_prefix_b=setting("strip_prefix_b"),
            threshold=setting("threshold"),
            scale=setting("scale"),
        )
    if json_path == "-":
        click.echo(json.dumps(result.to_json(), indent=1))
    else:
        if json_path is not None:
            Path(json_path).write_text(json.dumps(result.to_json(), indent=1), encoding="utf-8")
        click.echo(f"A {a}  vs  B {b}")
        for line in result.lines(show_unchanged=bool(options.get("show_unchanged"))):
            click.echo(click.style(line, fg=_LINE_COLORS.get(line[:1])) if line[:1] in _LINE_COLORS else line)
    return 0 if result.same else EXIT_DIVERGED


def reject_checkpoint_options(options: dict[str, Any]) -> None:
    """Checkpoint-only options given for trace folders are a usage error, not silently ignored."""
    given = [f"--{key.replace('_', '-')}" for key in (*_CHECKPOINT_OPTION_DEFAULTS, "show_unchanged") if options.get(key)]
    if given:
        raise click.UsageError(f"{', '.join(given)}: only for checkpoint files, not for trace folders")


@contextmanager
def _progress_bar(enabled: bool, what: str, *, in_bytes: bool) -> Iterator[Callable[[int, int], None] | None]:
    if not enabled:
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    count = DownloadColumn() if in_bytes else MofNCompleteColumn()
    columns = (TextColumn(what), BarColumn(), count, TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("diff", total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update
