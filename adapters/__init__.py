"""Framework adapters and the registry that picks one for a model (``tracespec.adapters``).

Adapters are found through the ``tracespec.adapters`` entry-point group (``pyproject.toml``).
Each adapter module exposes the same small surface:

- ``FRAMEWORK``: the framework's import name (``"torch"``), the key of the adapter;
- ``accepts(model) -> bool``: whether this adapter records ``model``;
- ``record(model, path, **options) -> Recorder``: the recorder (a context manager).

Picking an adapter never imports a framework: an adapter is only asked about a model when its
framework is already in ``sys.modules`` (a model of that framework cannot exist otherwise).
"""

from __future__ import annotations

import importlib
import os
import sys
from functools import cache
from importlib.metadata import entry_points
from types import ModuleType
from typing import Any

from tracespec.adapters._common import CaptureBudgetWarning, Recorder, RecordOptions, parse_options
from tracespec.errors import UsageError

__all__ = [
    "CaptureBudgetWarning",
    "RecordOptions",
    "Recorder",
    "adapter_for",
    "available_adapters",
    "load_adapter",
    "parse_options",
    "record",
]

ENTRY_POINT_GROUP = "tracespec.adapters"

# The framework a model must come from for each adapter (its top-level import name).
_FRAMEWORK_MODULE = {"torch": "torch", "paddle": "paddle", "onnxruntime": "onnxruntime"}


@cache
def available_adapters() -> dict[str, str]:
    """Adapter name -> module path, from the ``tracespec.adapters`` entry points."""
    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


def load_adapter(name: str) -> ModuleType:
    """Import the adapter module ``name`` (this imports its framework)."""
    adapters = available_adapters()
    if name not in adapters:
        raise UsageError(f"no tracespec adapter named {name!r}; installed: {', '.join(sorted(adapters)) or 'none'}")
    return importlib.import_module(adapters[name])


def adapter_for(model: Any) -> ModuleType:
    """The adapter module that records ``model``, chosen among frameworks already imported."""
    adapters = available_adapters()
    for name in sorted(adapters):
        framework = _FRAMEWORK_MODULE.get(name, name)
        if framework not in sys.modules:
            continue
        try:
            module = load_adapter(name)
        except ImportError:
            continue
        if module.accepts(model):
            return module
    installed = ", ".join(sorted(adapters)) or "none"
    raise UsageError(
        f"tracespec.record: no adapter records a {type(model).__module__}.{type(model).__qualname__}; "
        f"installed adapters: {installed}. Pass a torch.nn.Module, a paddle.nn.Layer or an ONNX model, "
        "and install the framework's extra, e.g. `pip install tracespec[torch]` (or [paddle], [onnxruntime])."
    )


def record(model: Any, path: str | os.PathLike[str], **options: Any) -> Recorder:
    """Record ``model`` into the trace folder ``path``; use the result as a context manager.

    Options are documented in ``docs/recording.md`` (``capture``, ``levels``, ``include``,
    ``exclude``, ``roles``, ``every``, ``max_bytes``, ``optimizer``, ``metadata``, ``overwrite``,
    ``rank``, ``world_size``, ``compression``, ``durable``, ``publish``, ``stop_on_nonfinite``).
    """
    adapter = adapter_for(model)
    return adapter.record(model, path, **options)  # type: ignore[no-any-return]
