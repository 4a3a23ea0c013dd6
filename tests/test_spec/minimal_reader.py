"""A reader written from spec/v1 alone: json, pyarrow, zarr, ml_dtypes and the hash the spec names
(XXH3-128, through the ``xxhash`` package). It imports nothing of tracespec, on purpose: what it
needs that the spec does not say is a gap in the spec."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pyarrow as pa
import xxhash
import zarr

RAW_BITS = ("bfloat16", "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz")
"""Spec section 8: stored as unsigned integers of their width; ``attributes.tracespec.dtype`` names them."""


@dataclass
class Part:
    rank: int
    nodes: list[dict[str, Any]]
    calls: list[dict[str, Any]]
    tensors: list[dict[str, Any]]
    store: Any


def read(root: Path) -> tuple[dict[str, Any], list[Part]]:
    """Section 15: the manifest, then each rank's part.json, tables and store."""
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["format"] == "tracespec" and manifest["format_version"].split(".")[0] == "1"
    parts = []
    for folder in sorted(root.iterdir()):  # section 2 item 2: parts are found by listing
        if not re.fullmatch(r"rank_(0|[1-9][0-9]*)", folder.name) or not (folder / "part.json").exists():
            continue
        part = json.loads((folder / "part.json").read_text())
        rank = part["rank"]
        assert rank == int(folder.name[5:]) < manifest["world_size"]
        # a table with no segment has no rows (a checkpoint's trace has no calls)
        tables = {
            name: [row for segment in segments for row in pa.ipc.open_file(str(folder / segment["path"])).read_all().to_pylist()]
            for name, segments in part["tables"].items()
        }
        store = zarr.open_group(str(folder / part["store"]["path"]), mode="r")
        parts.append(Part(rank, tables["nodes"], tables["calls"], tables["tensors"], store))
    return manifest, parts


def arrays(part: Part) -> Iterator[tuple[dict[str, Any], np.ndarray]]:
    """Sections 8 and 9: every record that keeps data, with its values in their true dtype."""
    for row in part.tensors:
        if row["array"] is None:
            continue
        array = part.store[row["array"]]
        data = array[...]
        dtype = array.attrs["tracespec"]["dtype"]
        if dtype in RAW_BITS:
            data = data.view(getattr(ml_dtypes, dtype))
        yield row, data


def statistics(data: np.ndarray) -> dict[str, Any]:
    """Section 10: float64 over the finite elements; complex by modulus; NaN and Inf only counted."""
    values = np.abs(data.astype(np.complex128)) if np.iscomplexobj(data) else data.astype(np.float64)
    values = values.reshape(-1)
    finite = values[np.isfinite(values)]
    stats: dict[str, Any] = {"nan_count": int(np.isnan(values).sum()), "inf_count": int(np.isinf(values).sum())}
    if finite.size == 0:
        return {**stats, "min": None, "max": None, "mean": None, "std": None, "l2": None}
    mean = float(finite.sum() / finite.size)
    return {
        **stats,
        "min": float(finite.min()),
        "max": float(finite.max()),
        "mean": mean,
        "std": math.sqrt(float(((finite - mean) ** 2).sum()) / finite.size),
        "l2": math.sqrt(float((finite * finite).sum())),
    }


def content_hash(data: np.ndarray) -> str:
    """Section 10: XXH3-128 of the C-order little-endian bytes, bfloat16/float8 as raw bits."""
    contiguous = np.ascontiguousarray(data)
    if contiguous.dtype.byteorder == ">":
        contiguous = contiguous.astype(contiguous.dtype.newbyteorder("<"))
    return "xxh3_128:" + xxhash.xxh3_128_hexdigest(contiguous.reshape(-1).view(np.uint8).tobytes())


def check(root: Path) -> int:
    """Recompute every statistic and hash of the trace at ``root`` and compare them with the
    records (statistics within the spec's 1e-9 relative allowance); the number of arrays checked."""
    _, parts = read(root)
    checked = 0
    for part in parts:
        for row, data in arrays(part):
            assert list(data.shape) == list(row["shape"]), (root, row["id"])
            if row["hash"] is not None:
                assert content_hash(data) == row["hash"], (root, row["id"], "hash")
            if row["nan_count"] is not None:
                for name, value in statistics(data).items():
                    recorded = row[name]
                    if value is None or recorded is None:
                        assert value is None and recorded is None, (root, row["id"], name, value, recorded)
                    else:
                        assert math.isclose(value, recorded, rel_tol=1e-9, abs_tol=1e-12 * max(1.0, abs(value))), (
                            root,
                            row["id"],
                            name,
                            value,
                            recorded,
                        )
            checked += 1
    return checked
