"""The format is readable without tracespec: a reader that follows spec/v1 with nothing but json,
pyarrow and zarr gets every tensor back, bit for bit.

The reader runs in a fresh interpreter that never imports tracespec (checked in ``sys.modules``).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import ml_dtypes
import numpy as np

from tracespec import TraceWriter

PLAIN_READER = r"""
import hashlib, json, sys
from pathlib import Path

import pyarrow as pa
import pyarrow.ipc
import zarr

root = Path(sys.argv[1])
manifest = json.loads((root / "manifest.json").read_text())
assert manifest["format"] == "tracespec" and manifest["format_version"].split(".")[0] == "1"
found = {}
for rank in range(manifest["world_size"]):
    part_dir = root / f"rank_{rank}"
    if not (part_dir / "part.json").exists():
        continue
    part = json.loads((part_dir / "part.json").read_text())
    segments = [pa.ipc.open_file(str(part_dir / s["path"])).read_all() for s in part["tables"]["tensors"]]
    store = zarr.open_group(str(part_dir / part["store"]["path"]), mode="r")
    for row in pa.concat_tables(segments).to_pylist():
        if row["array"] is None:
            continue
        array = store[row["array"]]
        data = array[...]                      # bfloat16/float8 come back as their uint bits
        true_dtype = array.attrs["tracespec"]["dtype"]
        assert true_dtype == row["dtype"] and list(data.shape) == row["shape"]
        found[f"{rank}/{row['id']}"] = {
            "dtype": true_dtype,
            "shape": list(data.shape),
            "sha256": hashlib.sha256(data.astype(data.dtype.newbyteorder("<")).tobytes()).hexdigest(),
        }
assert not any(name.startswith("tracespec") for name in sys.modules)
print(json.dumps(found))
"""


def sha256_of(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def test_plain_zarr_pyarrow_json_reader_gets_every_tensor(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    tensors = {
        "float32": rng.standard_normal((5, 7)).astype(np.float32),
        "bfloat16": rng.standard_normal((3, 4, 2)).astype(ml_dtypes.bfloat16),
        "float8_e4m3fn": rng.standard_normal(9).astype(ml_dtypes.float8_e4m3fn),
        "float8_e5m2": rng.standard_normal(9).astype(ml_dtypes.float8_e5m2),
        "int64": rng.integers(-(2**62), 2**62, size=(2, 3)),
        "bool": rng.random(6) > 0.5,
        "complex64": (rng.standard_normal(4) + 1j * rng.standard_normal(4)).astype(np.complex64),
        "scalar": np.array(np.float16(-0.0)),
        "empty": np.zeros((0, 4), np.float32),
        "transposed": rng.standard_normal((6, 3)).astype(np.float64).T,
    }
    tensors["float32"][0, 0] = np.nan
    expected: dict[str, str] = {}
    for rank in (0, 1):
        with TraceWriter(tmp_path / "t", framework="numpy", rank=rank, world_size=2, chunk_limit=24) as w:
            node = w.add_node("", "Model")
            for step in (0, 1):
                for slot, array in tensors.items():
                    rid = w.add_tensor(step=step, stage="forward", node=node, call=0, role="output", slot=slot, array=array)
                    expected[f"{rank}/{rid}"] = sha256_of(array)
                # a deduplicated record points at the same array; a statistics-only one has none
                dup = w.add_tensor(step=step, stage="forward", node=node, call=1, role="input", slot="0", same_as=rid)
                expected[f"{rank}/{dup}"] = expected[f"{rank}/{rid}"]
                w.add_tensor(
                    step=step, stage="forward", node=node, role="parameter", slot="w", array=tensors["float32"], level="stats"
                )
                w.end_step(step)
    out = subprocess.run([sys.executable, "-c", PLAIN_READER, str(tmp_path / "t")], capture_output=True, text=True, check=True)
    found = json.loads(out.stdout)
    assert {key: v["sha256"] for key, v in found.items()} == expected
