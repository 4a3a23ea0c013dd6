"""Compare two traces and say where they diverge: alignment, metrics, tolerances, diagnosis.

Pure functions over trace metadata and streamed tensors; importing this package never imports a
framework (torch, paddle, onnxruntime).

``tracespec.compare`` is both this package and the function users call: the package is callable
(``tracespec.compare(a, b)`` is ``compare_traces(a, b)``), so ``import tracespec.compare as c``
and ``tracespec.compare.engine`` keep working after ``import tracespec`` instead of finding a
function where the package should be.
"""

import sys
import types
from typing import Any

from tracespec.compare.engine import compare_traces
from tracespec.compare.layer_map import LayerMap, load_layer_map, parse_layer_map
from tracespec.compare.tolerance import DEFAULT_TOLERANCES, MODES
from tracespec.compare.verdict import VERDICT_VERSION, Verdict, validate_verdict

compare = compare_traces


class _CallablePackage(types.ModuleType):
    def __call__(self, *args: Any, **kwargs: Any) -> Verdict:
        return compare_traces(*args, **kwargs)

    __call__.__doc__ = compare_traces.__doc__


sys.modules[__name__].__class__ = _CallablePackage

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
