"""Print what ``tracespec diff`` says on every case of the real-port corpus, as a Markdown table.

    cd tests && ../.venv/bin/python -m test_compare.real_ports.report [FOLDER]

Records the corpus into FOLDER (default: a temporary folder, removed afterwards; about 3.4 GB),
then compares each port with its reference at default settings. ``docs/diff.md`` quotes it.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import tracespec
from test_compare.real_ports import build
from test_compare.test_real_ports import BUG_CASES, CORRECT_PORTS


def _row(case: str, verdict: tracespec.Verdict) -> str:
    calls = verdict.coverage["ranks"]["0"]["calls"]
    methods = ", ".join(f"{k} {v}" for k, v in calls["by_method"].items() if v)
    first = verdict.first_divergence
    culprit = "-"
    if first is not None:
        sides = [" + ".join(side.get("routes") or [side["route"]]) for side in (first["a"], first["b"])]
        culprit = f"{first['stage']} {first['kind']}: `{sides[0]}` / `{sides[1]}`"
    return (
        f"| {case} | {verdict.status} | {calls['compared_a']}/{calls['leaf_a']} ({calls['fraction_a']:.0%}) | "
        f"{calls['compared_b']}/{calls['leaf_b']} ({calls['fraction_b']:.0%}) | {methods} | {culprit} |"
    )


def main(folder: Path) -> None:
    references = {arch: build.record_reference(arch, folder / arch / "torch") for arch in {a for a, _ in CORRECT_PORTS}}
    print("| case | verdict | A's leaf calls compared | B's | aligned by | first divergence (A / B) |")
    print("|---|---|---|---|---|---|")
    for architecture, port in CORRECT_PORTS:
        trace = build.record_port(architecture, port, folder / architecture / port)
        print(_row(f"{architecture} {port}", tracespec.compare(references[architecture], trace)), flush=True)
    for port, bug in BUG_CASES:
        trace = build.record_port("resnet18", port, folder / "resnet18" / f"{port}_{bug}", bug)
        print(_row(f"resnet18 {port} {bug}", tracespec.compare(references["resnet18"], trace)), flush=True)


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(Path(sys.argv[1]))
    else:
        scratch = Path(tempfile.mkdtemp(prefix="tracespec-real-ports-"))
        try:
            main(scratch)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
