"""Compare two traces and say where they diverge: alignment, metrics, tolerances, diagnosis.

Pure functions over trace metadata and streamed tensors; importing this package never imports a
framework (torch, paddle, onnxruntime).
"""

from tracespec.compare.layer_map import LayerMap, load_layer_map, parse_layer_map
from tracespec.compare.engine import compare_traces
from tracespec.compare.tolerance import DEFAULT_TOLERANCES, MODES
from tracespec.compare.verdict import VERDICT_VERSION, Verdict, validate_verdict

compare = compare_traces

__all__ = [
    "DEFAULT_TOLERANCES",
    "MODES",
    "VERDICT_VERSION",
    "LayerMap",
    "Verdict",
    "compare",
    "compare_traces",
    "load_layer_map",
    "parse_layer_map",
    "validate_verdict",
]
