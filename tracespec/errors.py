"""One error tree for the whole of tracespec.

Every error carries a stable ``reason`` code. The reason codes of trace-format errors are part of
the spec (``spec/v1/README.md``, section "Reason codes") and of its conformance cases, so they
never change meaning once released. The CLI turns any :class:`TracespecError` into one line on
stderr and exit code 3.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "ArrayInvalidError",
    "ArrayMissingError",
    "ChunkMissingError",
    "DataMismatchError",
    "InputFileError",
    "InvalidShapeError",
    "ManifestInvalidError",
    "ManifestUnreadableError",
    "NonFiniteError",
    "NotATraceError",
    "PathEscapeError",
    "StorageError",
    "TableInvalidError",
    "TableMismatchError",
    "TraceFormatError",
    "TracespecError",
    "UnsupportedDtypeError",
    "UnsupportedVersionError",
    "UsageError",
]


class TracespecError(Exception):
    """Base class of every error tracespec raises on purpose."""

    reason: ClassVar[str] = "error"


class UsageError(TracespecError, ValueError):
    """The caller asked for something that cannot be done (a bad option or combination)."""

    reason = "usage"


class NonFiniteError(TracespecError, ArithmeticError):
    """A recorded call produced NaN or Inf from finite inputs (``record(..., stop_on_nonfinite=True)``)."""

    reason = "nonfinite"


class InputFileError(TracespecError, ValueError):
    """An input file that is not a trace (a checkpoint, a dump) is unreadable or unsafe."""

    reason = "invalid_input"


class StorageError(TracespecError, OSError):
    """A trace's object store failed: no credentials, access denied, an unreachable endpoint
    (docs/storage.md). Says nothing about the trace itself."""

    reason = "storage_error"


class TraceFormatError(TracespecError, ValueError):
    """A trace does not conform to the spec."""

    reason = "invalid_trace"


class NotATraceError(TraceFormatError):
    reason = "not_a_trace"


class ManifestUnreadableError(TraceFormatError):
    reason = "manifest_unreadable"


class ManifestInvalidError(TraceFormatError):
    reason = "manifest_invalid"


class UnsupportedVersionError(TraceFormatError):
    reason = "unsupported_major_version"


class UnsupportedDtypeError(TraceFormatError):
    reason = "unsupported_dtype"


class TableInvalidError(TraceFormatError):
    reason = "table_invalid"


class TableMismatchError(TraceFormatError):
    reason = "table_mismatch"


class PathEscapeError(TraceFormatError):
    reason = "path_escape"


class ArrayMissingError(TraceFormatError):
    reason = "array_missing"


class ArrayInvalidError(TraceFormatError):
    reason = "array_invalid"


class ChunkMissingError(TraceFormatError):
    reason = "chunk_missing"


class InvalidShapeError(TraceFormatError):
    reason = "invalid_shape"


class DataMismatchError(TraceFormatError):
    reason = "data_mismatch"
