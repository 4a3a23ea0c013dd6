"""Run every conformance case of spec/v1 through validate_trace and through `tracespec validate`.

A valid case passes deep validation (and is complete or not, as its case.json says); an invalid
case is rejected with exactly its reason code: by the API as the error's ``reason``, by the CLI
(through the conformance runner) as ``{valid: false, reason}`` on stdout, exit code 3 and one
line on stderr naming it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tracespec import validate_trace
from tracespec.errors import TraceFormatError

CONFORMANCE = Path(__file__).resolve().parents[2] / "spec" / "v1" / "conformance"
CASE_FILES = sorted(CONFORMANCE.glob("*/case.json"))


def load_case(path: Path) -> dict[str, Any]:
    case: dict[str, Any] = json.loads(path.read_text())
    case["trace"] = path.parent / "trace"
    return case


def test_the_corpus_exists_and_covers_both_kinds() -> None:
    assert CONFORMANCE.is_dir(), f"{CONFORMANCE} is missing"
    cases = [load_case(p) for p in CASE_FILES]
    assert sum(1 for c in cases if c.get("valid")) >= 5
    assert sum(1 for c in cases if "error" in c) >= 20
    for c in cases:
        assert c["name"] == c["trace"].parent.name and c["description"]
        assert ("valid" in c) != ("error" in c), c["name"]


@pytest.mark.parametrize("case_file", CASE_FILES, ids=[p.parent.name for p in CASE_FILES])
def test_case_through_the_api(case_file: Path) -> None:
    case = load_case(case_file)
    if case.get("valid"):
        report = validate_trace(case["trace"], deep=True)
        assert report.complete == case["complete"]
        if "partial_steps" in case:  # cases of an interrupted writer say what it left
            part = report.trace.parts[0].manifest
            assert list(part.partial_steps) == case["partial_steps"]
            assert (part.ending and part.ending.how) == case["ending"]
    else:
        with pytest.raises(TraceFormatError) as caught:
            validate_trace(case["trace"], deep=True)
        assert caught.value.reason == case["error"], str(caught.value)


RUNNER = CONFORMANCE / "run_conformance.py"


def test_every_case_through_the_runner_and_the_cli() -> None:
    """The runner any implementation can use, driving ``tracespec validate --deep --json`` as a process."""
    command = [
        sys.executable,
        str(RUNNER),
        "--jobs",
        "2",
        "--",
        sys.executable,
        "-m",
        "tracespec.cli",
        "validate",
        "--deep",
        "--json",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[-1] == f"{len(CASE_FILES)} of {len(CASE_FILES)} cases agree"


def test_the_runner_reports_a_validator_that_disagrees() -> None:
    says_valid = [sys.executable, "-c", "import json; print(json.dumps({'valid': True, 'complete': True}))"]
    done = subprocess.run(
        [sys.executable, str(RUNNER), "--case", "manifest-*", "--", *says_valid], capture_output=True, text=True
    )
    assert done.returncode == 1
    assert (
        'FAIL manifest-garbled  expected {"valid": false, "reason": "manifest_unreadable"}, got {"valid": true, "complete": true}'
        in done.stdout
    )
    says_nothing = [sys.executable, "-c", "print('fine')"]
    done = subprocess.run(
        [sys.executable, str(RUNNER), "--case", "valid-minimal", "--", *says_nothing], capture_output=True, text=True
    )
    assert done.returncode == 1 and "stdout is not one JSON object" in done.stdout


def test_a_real_process_prints_one_line_and_no_traceback() -> None:
    for name in ("manifest-garbled", "chunk-truncated", "array-path-escape"):
        case = load_case(CONFORMANCE / name / "case.json")
        done = subprocess.run(
            [sys.executable, "-m", "tracespec.cli", "validate", "--deep", str(case["trace"])], capture_output=True, text=True
        )
        assert done.returncode == 3 and done.stdout == ""
        assert done.stderr.count("\n") == 1 and f"[{case['error']}]" in done.stderr
        assert "Traceback" not in done.stderr
