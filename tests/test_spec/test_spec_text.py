"""The spec text and the code agree: reason codes, columns, types, dtypes, closed lists; the
schemas are valid JSON Schema; the spec's reading example runs on a conformance trace."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import pyarrow as pa
import pytest

import tracespec.errors as errors
from tracespec.format.dtypes import DTYPES
from tracespec.format.manifest import FORMAT_VERSION
from tracespec.format.tables import LEVELS, NODE_KINDS, ROLES, STAGES, TABLE_SCHEMAS

SPEC_DIR = Path(__file__).resolve().parents[2] / "spec" / "v1"
SPEC = (SPEC_DIR / "README.md").read_text()


def section(title: str) -> str:
    start = SPEC.index(f"## {title}")
    end = SPEC.find("\n## ", start + 1)
    return SPEC[start : end if end != -1 else None]


def table_rows(text: str) -> list[list[str]]:
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in text.splitlines() if line.startswith("|")]
    return [r for r in rows[2:] if r]  # drop header and separator


def test_header_names_the_version_of_the_code() -> None:
    assert f"Version:  {FORMAT_VERSION}" in SPEC and "Status:" in SPEC and "Change log" in SPEC


def test_reason_codes_table_matches_the_error_classes() -> None:
    in_code = {cls.reason for cls in vars(errors).values() if isinstance(cls, type) and issubclass(cls, errors.TraceFormatError)}
    in_spec = {row[0].strip("`") for row in table_rows(section("14. Reason codes"))}
    assert in_spec == in_code


@pytest.mark.parametrize("table", sorted(TABLE_SCHEMAS))
def test_every_column_is_specified_with_its_type(table: str) -> None:
    text = SPEC[SPEC.index("### 6.") :]
    text = text[text.index(f"`{table}`") :]
    rows = table_rows(text[: text.index("\n\n1.")])
    spec_types = {row[0].strip("`"): row[1].replace("\\", "") for row in rows}
    arrow_names = {
        pa.int32(): "int32",
        pa.int64(): "int64",
        pa.string(): "utf8",
        pa.float64(): "float64",
        pa.list_(pa.int64()): "list<int64>",
    }
    assert spec_types == {f.name: arrow_names[f.type] for f in TABLE_SCHEMAS[table]}
    required = {row[0].strip("`") for row in rows if row[2] == "yes"}
    assert required == {f.name for f in TABLE_SCHEMAS[table] if not f.nullable}


def test_every_dtype_is_in_the_data_types_table() -> None:
    named = set()
    for row in table_rows(section("8. Data types")):
        named |= set(re.findall(r"`([a-z0-9_]+)`", row[0]))
    assert named == set(DTYPES)
    for name, dt in DTYPES.items():
        if dt.stored_as_bits:
            assert f"| `{name}` | `{dt.zarr_data_type}` |" in SPEC


def test_closed_lists_are_spelled_as_in_the_code() -> None:
    roles = section("7. What records mean")
    assert all(f"`{role}`" in roles for role in ROLES)
    assert all(f"`{stage}`" in roles for stage in STAGES)
    assert all(f"| `{level}` |" in roles for level in LEVELS)
    assert all(f"`{kind}`" in section("6. Tables") for kind in NODE_KINDS)


@pytest.mark.parametrize("name", ["manifest.schema.json", "part.schema.json"])
def test_schemas_are_valid_json_schema(name: str) -> None:
    jsonschema.Draft202012Validator.check_schema(json.loads((SPEC_DIR / "schema" / name).read_text()))


def test_the_reading_example_runs_without_tracespec() -> None:
    code = SPEC[SPEC.index("```python", SPEC.index("## 15.")) + len("```python") :]
    code = code[: code.index("```")]
    trace = SPEC_DIR / "conformance" / "valid-every-dtype" / "trace"
    code = code.replace('root = "runs/ref"', f"root = {str(trace)!r}")
    probe = code + "\nimport sys\nassert not any(m.startswith('tracespec') for m in sys.modules)\nprint(len(rows))\n"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert int(out) > 20


def test_hash_test_vectors_hold_for_the_writer_and_a_spec_only_reader() -> None:
    import minimal_reader
    import numpy as np

    from tracespec.format.stats import content_hash

    vectors = re.findall(r"^\| (\d+) \| `([0-9a-f]{32})` \|$", section("10. Statistics and hashes"), re.M)
    assert [int(n) for n, _ in vectors] == [0, 1, 3, 4, 8, 9, 16, 17, 128, 129, 240, 241, 1000]
    for n, digest in vectors:
        data = np.arange(int(n), dtype=np.int64) % 251
        as_bytes = data.astype(np.uint8)
        assert content_hash(as_bytes) == minimal_reader.content_hash(as_bytes) == f"xxh3_128:{digest}", n
