"""`tracespec show` and `tracespec validate` through click's CliRunner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from tracespec.cli import cli


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.parametrize("command", [[], ["show"], ["validate"]])
def test_help_teaches(command: list[str]) -> None:
    code, out, _ = run(*command, "--help")
    assert code == 0 and "Usage:" in out and ("Example" in out or "Typical use" in out)


def test_version() -> None:
    code, out, _ = run("--version")
    assert code == 0 and "tracespec" in out


def test_show_prints_the_tree_with_shapes_dtypes_and_stats(small_trace: Path) -> None:
    code, out, _ = run("show", str(small_trace))
    assert code == 0
    lines = out.splitlines()
    assert "complete" in lines[0] and "steps [0, 1]" in lines[0]
    assert any("fc1 Linear" in line for line in lines)
    assert any("fc2 Linear ×2" in line for line in lines)  # called twice
    assert any("param[weight] float32[3x4] mean=" in line for line in lines)
    assert any("out[0] float32[2x3]" in line and "nan=1" in line for line in lines)
    assert any("out[0] float32[2] xxh3_128:" in line for line in lines)  # hash-only record
    assert any("out[1] NoneType None" in line for line in lines)


def test_show_json_is_machine_readable(small_trace: Path) -> None:
    code, out, _ = run("show", str(small_trace), "--json", "--step", "1", "--role", "output")
    assert code == 0
    doc = json.loads(out)
    assert doc["step"] == 1 and doc["steps"] == [0, 1] and doc["complete"] is True
    (root,) = doc["roots"]
    assert root["route"] == "" and [c["route"] for c in root["children"]] == ["fc1", "fc2"]
    fc1 = root["children"][0]
    assert [r["role"] for r in fc1["records"]] == ["output"]
    assert fc1["records"][0]["nan_count"] == 1 and fc1["records"][0]["step"] == 1


def test_show_depth_collapses(small_trace: Path) -> None:
    code, out, _ = run("show", str(small_trace), "--depth", "0")
    assert code == 0 and "2 children (raise --depth)" in out and "fc1" not in out


@pytest.mark.parametrize(("option", "value"), [("--step", "5"), ("--rank", "3")])
def test_show_rejects_absent_steps_and_ranks_as_usage_errors(small_trace: Path, option: str, value: str) -> None:
    code, _, err = run("show", str(small_trace), option, value)
    assert code == 2 and "not in this trace" in err


def test_validate_accepts_a_conforming_trace(small_trace: Path) -> None:
    code, out, _ = run("validate", str(small_trace), "--deep")
    assert code == 0 and "valid tracespec 1.1 trace, complete" in out


def test_validate_json(small_trace: Path) -> None:
    code, out, _ = run("validate", str(small_trace), "--json")
    doc = json.loads(out)
    assert code == 0 and doc["valid"] and doc["complete"] and doc["records"] == 8 and doc["arrays"] == 4


def test_validate_reports_an_incomplete_trace_as_valid(small_trace: Path) -> None:
    part = small_trace / "rank_0" / "part.json"
    part.write_text(part.read_text().replace('"complete": true', '"complete": false'))
    code, out, _ = run("validate", str(small_trace))
    assert code == 0 and "INCOMPLETE" in out


@pytest.mark.parametrize("command", ["show", "validate"])
def test_a_bad_trace_gets_one_line_and_exit_3(small_trace: Path, command: str) -> None:
    (small_trace / "manifest.json").write_bytes(b'{"format": "tracespec", "form')
    code, out, err = run(command, str(small_trace))
    assert code == 3 and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("Error: [manifest_unreadable]")


def test_a_folder_that_is_not_a_trace(tmp_path: Path) -> None:
    code, _, err = run("validate", str(tmp_path))
    assert code == 3 and "[not_a_trace]" in err


def test_validate_and_show_say_how_an_incomplete_trace_ended() -> None:
    trace = Path(__file__).resolve().parents[2] / "spec" / "v1" / "conformance" / "valid-ended-by-signal" / "trace"
    code, out, _ = run("validate", str(trace))
    assert code == 0 and "INCOMPLETE (rank 0 ended by signal SIGTERM at step 1, partial steps [1])" in out
    code, out, _ = run("show", str(trace))
    assert code == 0 and "ended by signal SIGTERM at step 1" in out.splitlines()[0]
    code, out, _ = run("show", str(trace), "--json")
    assert code == 0 and json.loads(out)["partial_steps"] == [1]


def test_out_of_memory_is_not_read_as_a_divergence() -> None:
    import click

    from tracespec.cli.errors import EXIT_DIVERGED, EXIT_OUT_OF_MEMORY, report_errors

    with pytest.raises(click.ClickException) as caught, report_errors():
        raise MemoryError
    assert caught.value.exit_code == EXIT_OUT_OF_MEMORY != EXIT_DIVERGED
    assert "out of memory" in caught.value.message
