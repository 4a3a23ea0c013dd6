"""Storage of traces: Arrow tables and a Zarr v3 tensor store, written and read streaming."""

from tracespec.storage.reader import Part, Trace, load_trace
from tracespec.storage.validate import ValidationReport, validate_trace
from tracespec.storage.writer import TraceWriter
from tracespec.storage.zarr_store import ArrayMeta, missing_chunks

__all__ = ["ArrayMeta", "Part", "Trace", "TraceWriter", "ValidationReport", "load_trace", "missing_chunks", "validate_trace"]
