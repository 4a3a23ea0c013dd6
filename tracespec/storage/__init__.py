"""Storage of traces: Arrow tables and a Zarr v3 tensor store, written and read streaming, in a
local folder or at a URL (an object store, through fsspec)."""

from tracespec.storage.copy import CopyReport, copy_trace
from tracespec.storage.location import current_location_defaults, is_url, location_defaults
from tracespec.storage.reader import Part, Trace, load_trace
from tracespec.storage.validate import ValidationReport, validate_trace
from tracespec.storage.writer import TraceWriter, replace_manifest_source
from tracespec.storage.zarr_store import ArrayMeta, missing_chunks

__all__ = [
    "ArrayMeta",
    "CopyReport",
    "Part",
    "Trace",
    "TraceWriter",
    "ValidationReport",
    "copy_trace",
    "current_location_defaults",
    "is_url",
    "load_trace",
    "location_defaults",
    "missing_chunks",
    "replace_manifest_source",
    "validate_trace",
]
