"""Framework adapters and the registry that picks one for a model (``tracespec.adapters``).

Adapters are found through the ``tracespec.adapters`` entry-point group (``pyproject.toml``).
Each adapter module exposes the same small surface:

- ``FRAMEWORK``: the framework's import name (``"torch"``), the key of the adapter;
- ``accepts(model) -> bool``: whether this adapter records ``model``;
- ``record(model, path, **options)``: what it returns satisfies :class:`Recording` (a context
  manager with ``path`` and ``flush()``); torch and Paddle return a :class:`Recorder`, whose
  ``step()`` ends a training step, ONNX Runtime an ``OnnxTrace``, whose ``run(feed)`` runs and
  records one step.

Picking an adapter never imports a framework: an adapter is only asked about a model when its
framework is already in ``sys.modules`` (a model of that framework cannot exist otherwise).
"""

from __future__ import annotations

import importlib
import os
import sys
from functools import cache
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol, runtime_checkable

from tracespec.adapters._common import CaptureBudgetWarning, Recorder
from tracespec.adapters._options import RecordOptions, parse_options
from tracespec.errors import UsageError

__all__ = [
    "CaptureBudgetWarning",
    "RecordOptions",
    "Recorder",
    "Recording",
    "adapter_for",
    "available_adapters",
    "load_adapter",
    "parse_options",
    "record",
]

ENTRY_POINT_GROUP = "tracespec.adapters"

# The modules one of which a model of each adapter's framework comes from: an adapter is asked
# about a model only when one of them is imported (an ONNX model is an onnx.ModelProto).
_FRAMEWORK_MODULES = {"torch": ("torch",), "paddle": ("paddle",), "onnxruntime": ("onnxruntime", "onnx")}


@runtime_checkable
class Recording(Protocol):
    """What ``tracespec.record`` returns, whatever the framework: a context manager that writes
    the trace at ``path``; leaving the block normally marks it complete, an exception leaves it
    readable and marked incomplete. ``flush()`` publishes what is recorded so far."""

    path: Path

    def flush(self) -> None: ...

    def __enter__(self) -> Any: ...

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None: ...


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
    """The adapter module that records ``model``, chosen among frameworks already imported (a
    ``.onnx`` path needs none imported: it is ONNX Runtime's)."""
    adapters = available_adapters()
    if isinstance(model, (str, os.PathLike)) and str(model).endswith(".onnx") and "onnxruntime" in adapters:
        return load_adapter("onnxruntime")
    for name in sorted(adapters):
        if not any(module in sys.modules for module in _FRAMEWORK_MODULES.get(name, (name,))):
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


def record(model: Any, path: str | os.PathLike[str], **options: Any) -> Recording:
    """Record ``model`` into the trace folder ``path``; use the result as a context manager.

    Options are documented in ``docs/recording.md`` (``capture``, ``levels``, ``include``,
    ``exclude``, ``roles``, ``every``, ``max_bytes``, ``optimizer``, ``metadata``, ``overwrite``,
    ``rank``, ``world_size``, ``compression``, ``durable``, ``publish``, ``stop_on_nonfinite``).
    """
    recording: Recording = adapter_for(model).record(model, path, **options)
    return recording
