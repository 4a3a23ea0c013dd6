"""tracespec: record what a model computes, and find where two runs diverge.

The core never imports a framework: ``import tracespec`` loads numpy, zarr and pyarrow only.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import tracespec.compare as compare  # a callable package: compare(a, b) -> Verdict
from tracespec._version import __version__
from tracespec.compare import Verdict
from tracespec.errors import TraceFormatError, TracespecError
from tracespec.format import FORMAT_VERSION
from tracespec.nonfinite import NonFiniteOrigin, first_nonfinite
from tracespec.storage import Trace, TraceWriter, load_trace, validate_trace

if TYPE_CHECKING:
    from tracespec.adapters import Recording


__all__ = [
    "FORMAT_VERSION",
    "NonFiniteOrigin",
    "Trace",
    "TraceFormatError",
    "TraceWriter",
    "TracespecError",
    "Verdict",
    "__version__",
    "compare",
    "first_nonfinite",
    "load_trace",
    "record",
    "record_onnx",
    "validate_trace",
]


def record(model: Any, path: str | os.PathLike[str], **options: Any) -> Recording:
    """Record what ``model`` computes into the trace folder ``path`` (a context manager).

    ``model`` is a ``torch.nn.Module``, a ``paddle.nn.Layer`` (call ``step()`` on the result after
    each training step), or an ONNX model, a ``.onnx`` path or an ``onnx.ModelProto`` (call
    ``run(feed)`` on the result, one step each). The framework is picked from the model; see
    ``docs/recording.md`` for the options. Importing the adapters happens here, on first use, so
    ``import tracespec`` stays free of any framework.
    """
    from tracespec.adapters import record as record_with_adapter

    return record_with_adapter(model, path, **options)


def record_onnx(model: Any, inputs: Any, path: str | os.PathLike[str], **options: Any) -> Any:
    """Run an ONNX model in ONNX Runtime and record every intermediate value into ``path``.

    See :func:`tracespec.adapters.onnxruntime.record_onnx` and ``docs/onnx.md``. onnxruntime is
    imported on the first call, never by ``import tracespec``.
    """
    from tracespec.adapters.onnxruntime import record_onnx as record_with_onnxruntime

    return record_with_onnxruntime(model, inputs, path, **options)
