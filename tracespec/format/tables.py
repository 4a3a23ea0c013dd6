"""The three Arrow tables of a trace part (spec section "Tables"): nodes, calls and tensors.

Column names and types here are normative; the spec lists the same columns with their meaning.
A reader adds a ``rank`` column when it concatenates the parts of several ranks.
"""

from __future__ import annotations

from typing import Final

import pyarrow as pa

__all__ = [
    "CALLS_SCHEMA",
    "LEVELS",
    "NODES_SCHEMA",
    "NODE_KINDS",
    "ROLES",
    "STAGES",
    "STAT_COLUMNS",
    "TABLE_NAMES",
    "TABLE_SCHEMAS",
    "TENSORS_SCHEMA",
]

STAGES: Final = ("forward", "backward", "update")
"""``forward``: module calls and the parameters they used; ``backward``: gradients;
``update``: parameters and optimizer state after the optimizer step."""

ROLES: Final = (
    "input",
    "output",
    "grad_output",
    "grad_input",
    "parameter",
    "buffer",
    "parameter_grad",
    "optimizer_state",
)

LEVELS: Final = ("full", "stats", "hash")
"""What a tensor record keeps: ``full`` the data (and its statistics and hash),
``stats`` the statistics only, ``hash`` the content hash only."""

NODE_KINDS: Final = ("module", "op")

STAT_COLUMNS: Final = ("min", "max", "mean", "std", "l2", "nan_count", "inf_count")

NODES_SCHEMA: Final = pa.schema(
    [
        pa.field("node", pa.int32(), nullable=False),
        pa.field("parent", pa.int32()),
        pa.field("route", pa.string(), nullable=False),
        pa.field("class_name", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),
        pa.field("position", pa.int32(), nullable=False),
        pa.field("attrs", pa.string()),
    ]
)

CALLS_SCHEMA: Final = pa.schema(
    [
        pa.field("step", pa.int64(), nullable=False),
        pa.field("stage", pa.string(), nullable=False),
        pa.field("node", pa.int32(), nullable=False),
        pa.field("call", pa.int32(), nullable=False),
        pa.field("begin", pa.int64(), nullable=False),
        pa.field("end", pa.int64(), nullable=False),
    ]
)

TENSORS_SCHEMA: Final = pa.schema(
    [
        pa.field("id", pa.int64(), nullable=False),
        pa.field("step", pa.int64(), nullable=False),
        pa.field("stage", pa.string(), nullable=False),
        pa.field("node", pa.int32(), nullable=False),
        pa.field("call", pa.int32()),
        pa.field("role", pa.string(), nullable=False),
        pa.field("slot", pa.string(), nullable=False),
        pa.field("dtype", pa.string()),
        pa.field("shape", pa.list_(pa.int64())),
        pa.field("level", pa.string()),
        pa.field("value_type", pa.string()),
        pa.field("value", pa.string()),
        pa.field("min", pa.float64()),
        pa.field("max", pa.float64()),
        pa.field("mean", pa.float64()),
        pa.field("std", pa.float64()),
        pa.field("l2", pa.float64()),
        pa.field("nan_count", pa.int64()),
        pa.field("inf_count", pa.int64()),
        pa.field("hash", pa.string()),
        pa.field("array", pa.string()),
    ]
)

TABLE_SCHEMAS: Final = {"nodes": NODES_SCHEMA, "calls": CALLS_SCHEMA, "tensors": TENSORS_SCHEMA}
TABLE_NAMES: Final = tuple(TABLE_SCHEMAS)
