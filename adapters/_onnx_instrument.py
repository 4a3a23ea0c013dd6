"""Statistics computed inside an ONNX graph: the nodes the recorder adds to the model it runs.

At the ``stats`` level ONNX Runtime computes each captured floating-point value's sum, sum of
squares, min and max in the graph, so no tensor is copied to Python.
"""

from __future__ import annotations

import math
from typing import Final

import numpy as np
import onnx

from tracespec.errors import UsageError
from tracespec.format.stats import TensorStats

STATS_TYPES: Final = frozenset({onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16})
# Names of the values and nodes the recorder adds start with this, apart from the model's own.
PREFIX: Final = "tracespec::"
MOMENTS: Final = ("sum", "squares", "min", "max")


def stats_from_moments(shape: tuple[int, ...], total: float, squares: float, low: float, high: float) -> TensorStats:
    count = math.prod(shape)
    if count == 0:
        return TensorStats(0, None, None, None, None, None, 0, 0)
    mean = total / count
    return TensorStats(
        count=count,
        min=low,
        max=high,
        mean=mean,
        std=math.sqrt(max(squares / count - mean * mean, 0.0)),
        l2=math.sqrt(squares),
        nan_count=0,
        inf_count=0,
    )


def moment_nodes(name: str, prefix: str, elem_type: int, rank: int | None, opset: int) -> list[onnx.NodeProto]:
    """Nodes computing ``<prefix>:sum``, ``:squares`` (float64 scalars), ``:min`` and ``:max`` of
    ``name``.

    ONNX Runtime's float64 kernels are several times slower than its float32 ones, so sums are
    taken in float32 along the last axis (rows of the tensor, in parallel), and the row sums are
    added in float64: the error is that of float32 sums over one row.
    """
    make = onnx.helper.make_node
    nodes = []
    source = name
    if elem_type == onnx.TensorProto.FLOAT16:  # float16 squares overflow at 256
        nodes.append(make("Cast", [source], [f"{prefix}:float"], to=onnx.TensorProto.FLOAT, name=f"{prefix}:float"))
        source = f"{prefix}:float"
    if not rank:  # a 0-d value or an unknown rank: one row
        nodes.append(make("Reshape", [source, f"{PREFIX}row"], [f"{prefix}:rows"], name=f"{prefix}:rows"))
        source = f"{prefix}:rows"
    # Every reduction runs along the last axis first, over rows in parallel (a reduction over
    # all axes at once runs on one thread: twice as slow for min and max), then over the rows.
    for op, part in (("ReduceSum", "sum"), ("ReduceSumSquare", "squares"), ("ReduceMin", "min"), ("ReduceMax", "max")):
        partial = f"{prefix}:row_{part}"
        if opset >= 18 or (op == "ReduceSum" and opset >= 13):
            nodes.append(make(op, [source, f"{PREFIX}last_axis"], [partial], keepdims=0, name=partial))
        else:
            nodes.append(make(op, [source], [partial], axes=[-1], keepdims=0, name=partial))
        if op in ("ReduceSum", "ReduceSumSquare"):
            nodes.append(make("Cast", [partial], [f"{partial}:double"], to=onnx.TensorProto.DOUBLE, name=f"{partial}:double"))
            nodes.append(make("ReduceSum", [f"{partial}:double"], [f"{prefix}:{part}"], keepdims=0, name=f"{prefix}:{part}"))
        else:
            nodes.append(make(op, [partial], [f"{prefix}:{part}"], keepdims=0, name=f"{prefix}:{part}"))
    return nodes


def dtype_name(elem_type: int) -> str:
    if elem_type == onnx.TensorProto.BFLOAT16:
        return "bfloat16"
    try:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)).name
    except (KeyError, TypeError):
        raise UsageError(f"cannot record a value of ONNX element type {elem_type} without its data") from None
