"""Run every conformance case through any implementation's validator and report disagreements.

Needs only Python's standard library. The validator is a command; the runner appends a case's
trace folder to it and reads one JSON object from its standard output:

    {"valid": true, "complete": true | false}       the trace conforms (complete or not)
    {"valid": false, "reason": "<reason code>"}     it does not, for that reason (spec section 14)

Other keys are ignored, and so are the exit status and standard error. A case agrees when a
valid case is reported valid with its ``complete``, and an invalid case is reported invalid with
exactly its reason code.

    python spec/v1/conformance/run_conformance.py -- tracespec validate --deep --json
    python spec/v1/conformance/run_conformance.py --jobs 4 --case 'array-*' -- ./my-reader --check

Exit 0 when every case agrees, 1 when one does not, 2 for a usage error.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import fnmatch
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def expected(case: dict[str, object]) -> dict[str, object]:
    if case.get("valid"):
        return {"valid": True, "complete": case["complete"]}
    return {"valid": False, "reason": case["error"]}


def run_case(command: list[str], folder: Path, timeout: float) -> dict[str, object]:
    """What the validator says of the trace in ``folder`` (``{"error": ...}`` when it says nothing usable)."""
    try:
        done = subprocess.run([*command, str(folder / "trace")], capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"error": f"could not run: {exc}"}
    try:
        said = json.loads(done.stdout)
    except ValueError:
        return {"error": f"stdout is not one JSON object (exit {done.returncode}): {done.stdout[-200:]!r}"}
    if not isinstance(said, dict) or not isinstance(said.get("valid"), bool):
        return {"error": f"no boolean 'valid' in {said!r}"[:300]}
    return {"valid": True, "complete": said.get("complete")} if said["valid"] else {"valid": False, "reason": said.get("reason")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog="The validator command follows '--'.")
    parser.add_argument("--cases", type=Path, default=HERE, help="folder of case folders (default: this one)")
    parser.add_argument("--case", default="*", help="only the cases whose name matches this glob")
    parser.add_argument("--jobs", type=int, default=2, help="cases run at once")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds one validation may take")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the validator command, after '--'")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the validator command after '--'")
    cases = {}
    for path in sorted(args.cases.glob("*/case.json")):
        case = json.loads(path.read_text())
        if fnmatch.fnmatchcase(case["name"], args.case):
            cases[case["name"]] = (path.parent, expected(case))
    if not cases:
        parser.error(f"no case in {args.cases} matches {args.case!r}")
    with concurrent.futures.ThreadPoolExecutor(max(1, args.jobs)) as pool:
        said = dict(zip(cases, pool.map(lambda item: run_case(command, item[0], args.timeout), cases.values()), strict=True))
    disagree = [name for name, (_, want) in cases.items() if said[name] != want]
    for name in cases:
        mark = "ok  " if name not in disagree else "FAIL"
        detail = "" if name not in disagree else f"  expected {json.dumps(cases[name][1])}, got {json.dumps(said[name])}"
        print(f"{mark} {name}{detail}")
    print(f"{len(cases) - len(disagree)} of {len(cases)} cases agree" + (f"; {len(disagree)} disagree" if disagree else ""))
    return 1 if disagree else 0


if __name__ == "__main__":
    sys.exit(main())
