"""The trace format as typed code: versions, manifests, tables, dtypes, statistics."""

from tracespec.format.dtypes import DTYPES, DType, dtype_of, parse_dtype
from tracespec.format.manifest import FORMAT_VERSION, Manifest, PartManifest
from tracespec.format.stats import TensorStats, compute_stats, content_hash
from tracespec.format.tables import LEVELS, ROLES, STAGES

__all__ = [
    "DTYPES",
    "FORMAT_VERSION",
    "LEVELS",
    "ROLES",
    "STAGES",
    "DType",
    "Manifest",
    "PartManifest",
    "TensorStats",
    "compute_stats",
    "content_hash",
    "dtype_of",
    "parse_dtype",
]
