"""The options every command that opens or writes a trace takes for traces at URLs (docs/storage.md)."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any

import click

from tracespec.storage import location_defaults

__all__ = ["location_options", "parse_storage_options"]


def parse_storage_options(pairs: tuple[str, ...]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs as fsspec storage options: a dotted key nests
    (``client_kwargs.endpoint_url=...``), a JSON value (``true``, ``8``) is decoded, any other
    value is a string."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key or any(not name for name in key.split(".")):
            raise click.BadParameter(
                f"{pair!r} is not KEY=VALUE (e.g. endpoint_url=http://localhost:9000)", param_hint="--storage-option"
            )
        try:
            value: Any = json.loads(text)
        except ValueError:
            value = text
        *parents, last = key.split(".")
        target = options
        for name in parents:
            target = target.setdefault(name, {})
            if not isinstance(target, dict):
                raise click.BadParameter(f"{key!r} nests under a key that already has a value", param_hint="--storage-option")
        target[last] = value
    return options


def location_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add ``--storage-option`` and ``--cache`` to a command: within it, every trace opened or
    written at a URL uses them (a baseline or a report's traces as well as the arguments)."""

    @functools.wraps(command)
    def wrapper(*args: Any, storage_options: tuple[str, ...], cache: str | None, **kwargs: Any) -> Any:
        with location_defaults(parse_storage_options(storage_options), cache):
            return command(*args, **kwargs)

    wrapper = click.option(
        "--cache",
        metavar="DIR",
        type=click.Path(file_okay=False, path_type=str),
        default=None,
        help="Traces at URLs: keep what was fetched in DIR and reuse it next time (default: a temporary folder).",
    )(wrapper)
    return click.option(
        "--storage-option",
        "storage_options",
        multiple=True,
        metavar="KEY=VALUE",
        help="Traces at URLs (s3://, gs://, az://): an option of the store's fsspec file system, repeatable "
        "(endpoint_url=http://localhost:9000, anon=true, client_kwargs.region_name=eu-west-1). "
        "Credentials come from the store's usual environment variables and files.",
    )(wrapper)
