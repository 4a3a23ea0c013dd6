"""tracespec: record what a model computes, and find where two runs diverge.

The core never imports a framework: ``import tracespec`` loads numpy, zarr and pyarrow only.
"""

from tracespec.compare import Verdict, compare
from tracespec.errors import TraceFormatError, TracespecError
from tracespec.format import FORMAT_VERSION
from tracespec.storage import Trace, TraceWriter, load_trace, validate_trace

__version__ = "0.1.0"

__all__ = [
    "FORMAT_VERSION",
    "Trace",
    "TraceFormatError",
    "TraceWriter",
    "TracespecError",
    "Verdict",
    "__version__",
    "compare",
    "load_trace",
    "validate_trace",
]
