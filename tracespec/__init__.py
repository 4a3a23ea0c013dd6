"""tracespec: record what a model computes, and find where two runs diverge.

The core never imports a framework: ``import tracespec`` loads numpy, zarr and pyarrow only.
"""

from tracespec.errors import TraceFormatError, TracespecError
from tracespec.format import FORMAT_VERSION
from tracespec.storage import Trace, TraceWriter, load_trace, validate_trace

__version__ = "0.1.0"


def record_onnx(model, inputs, path, **options):  # type: ignore[no-untyped-def]
    """Record an ONNX Runtime run; see :func:`tracespec.adapters.onnxruntime.record_onnx`.

    onnxruntime is imported on the first call, never by ``import tracespec``.
    """
    from tracespec.adapters.onnxruntime import record_onnx as record

    return record(model, inputs, path, **options)


__all__ = [
    "FORMAT_VERSION",
    "Trace",
    "TraceFormatError",
    "TraceWriter",
    "TracespecError",
    "__version__",
    "load_trace",
    "record_onnx",
    "validate_trace",
]
