"""Storage of traces: Arrow tables and a Zarr v3 tensor store, written and read streaming."""

from tracespec.storage.reader import Part, Trace, load_trace
from tracespec.storage.validate import ValidationReport, validate_trace
from tracespec.storage.writer import TraceWriter

__all__ = ["Part", "Trace", "TraceWriter", "ValidationReport", "load_trace", "validate_trace"]
