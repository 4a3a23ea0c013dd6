"""The rows of a part's tables (spec sections "Nodes", "Calls", "Tensors"), built and checked from
what a recorder hands the writer. Nothing here touches a file or a thread: the
:class:`~tracespec.storage.TraceWriter` decides when rows are written.
"""

from __future__ import annotations

import json
from typing import Any, Final

import numpy as np

from tracespec.errors import UsageError
from tracespec.format.dtypes import dtype_of, parse_dtype
from tracespec.format.stats import TensorStats
from tracespec.format.tables import LEVELS, NODE_KINDS, ROLES, STAGES

__all__ = ["TensorKind", "check_coordinates", "node_row", "stats_columns", "tensor_kind", "tensor_row", "value_row"]

_VALUE_REPR_LIMIT: Final = 200
_STATS_COLUMNS: Final = ("min", "max", "mean", "std", "l2", "nan_count", "inf_count")

TensorKind = tuple[str, tuple[int, ...], str]
"""A tensor record's dtype, shape and level."""


def check_coordinates(step: int, stage: str, node: int, call: int | None, role: str | None, nodes_added: int) -> None:
    """A record's place in the trace: a known stage and role, a node already added, counts from 0."""
    if stage not in STAGES:
        raise UsageError(f"stage {stage!r} is not one of {STAGES}")
    if role is not None and role not in ROLES:
        raise UsageError(f"role {role!r} is not one of {ROLES}")
    if not 0 <= node < nodes_added:
        raise UsageError(f"node {node} has not been added (add_node returns the ids)")
    if step < 0 or (call is not None and call < 0):
        raise UsageError(f"step ({step}) and call ({call}) count from 0")


def node_row(
    node: int, parent: int | None, route: str, class_name: str, kind: str, position: int, attrs: dict[str, Any] | None
) -> dict[str, Any]:
    if kind not in NODE_KINDS:
        raise UsageError(f"node kind {kind!r} is not one of {NODE_KINDS}")
    if parent is not None and not 0 <= parent < node:
        raise UsageError(f"parent {parent} is not the id of a node added before {route!r}")
    return {
        "node": node,
        "parent": parent,
        "route": route,
        "class_name": class_name,
        "kind": kind,
        "position": position,
        "attrs": json.dumps(attrs, sort_keys=True) if attrs else None,
    }


def tensor_kind(
    array: np.ndarray | None,
    dtype: str | None,
    shape: tuple[int, ...] | None,
    level: str,
    same_as: int | None,
    earlier: TensorKind | None,
) -> TensorKind:
    """The dtype, shape and level of a tensor record: the array's, the ones given, or (``same_as``)
    those of the ``earlier`` record it repeats."""
    if level not in LEVELS:
        raise UsageError(f"level {level!r} is not one of {LEVELS}")
    if earlier is not None:
        if array is not None and (dtype_of(array).name, tuple(array.shape)) != earlier[:2]:
            raise UsageError(
                f"same_as={same_as} names a {earlier[0]}{list(earlier[1])} tensor, "
                f"but the array passed is {dtype_of(array).name}{list(array.shape)}"
            )
        return earlier
    if array is not None:
        return dtype_of(array).name, tuple(int(d) for d in array.shape), level
    if dtype is None or shape is None:
        raise UsageError("add_tensor needs an array, or dtype and shape")
    checked = tuple(int(d) for d in shape)
    if any(d < 0 for d in checked):
        raise UsageError(f"shape {list(checked)} has a negative extent")
    if level == "full":
        raise UsageError("level 'full' needs the array")
    return parse_dtype(dtype).name, checked, level


def tensor_row(
    *,
    step: int,
    stage: str,
    node: int,
    call: int | None,
    role: str,
    slot: str,
    kind: TensorKind,
    hash: str | None,
    stats: TensorStats | None,
) -> dict[str, Any]:
    dtype, shape, level = kind
    return {
        "step": step,
        "stage": stage,
        "node": node,
        "call": call,
        "role": role,
        "slot": slot,
        "dtype": dtype,
        "shape": list(shape),
        "level": level,
        "value_type": None,
        "value": None,
        "hash": hash,
        "array": None,
        **stats_columns(stats),
    }


def value_row(*, step: int, stage: str, node: int, call: int | None, role: str, slot: str, value: object) -> dict[str, Any]:
    """A non-tensor leaf (an int, None, a string...): its type and a bounded ``repr``."""
    text = repr(value)
    if len(text) > _VALUE_REPR_LIMIT:
        text = text[: _VALUE_REPR_LIMIT - 3] + "..."
    return {
        "step": step,
        "stage": stage,
        "node": node,
        "call": call,
        "role": role,
        "slot": slot,
        "dtype": None,
        "shape": None,
        "level": None,
        "value_type": type(value).__name__,
        "value": text,
        "hash": None,
        "array": None,
        **stats_columns(None),
    }


def stats_columns(stats: TensorStats | None) -> dict[str, Any]:
    if stats is None:
        return dict.fromkeys(_STATS_COLUMNS)
    return {name: getattr(stats, name) for name in _STATS_COLUMNS}
