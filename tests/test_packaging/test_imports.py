"""Packaging: the core and the CLI never import a framework; the layout installs as designed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

FRAMEWORKS = ("torch", "paddle", "onnxruntime")


@pytest.mark.parametrize(
    "code",
    [
        "import tracespec",
        "import tracespec, tracespec.cli, tracespec.storage, tracespec.format",
        "from tracespec.cli import main; main(['--help'])",
        "from tracespec.cli import main; main(['show', '--help'])",
    ],
)
def test_core_and_cli_import_no_framework(code: str) -> None:
    probe = (
        "import sys, atexit\n"
        f"atexit.register(lambda: print(sorted(set({FRAMEWORKS!r}) & set(sys.modules)), file=sys.stderr))\n"
        f"{code}\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip().splitlines()[-1] == "[]"


def test_console_script_help_imports_no_framework() -> None:
    """`tracespec --help` as installed; PYTHONPROFILEIMPORTTIME makes Python list every import."""
    script = Path(sys.executable).parent / "tracespec"
    assert script.exists(), f"the console script is not installed next to {sys.executable}"
    done = subprocess.run([str(script), "--help"], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPROFILEIMPORTTIME": "1"})
    assert done.returncode == 0 and "Usage: tracespec" in done.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if "|" in line}
    assert "tracespec.cli" in imported  # the profile did list imports
    assert not {name.split(".")[0] for name in imported} & set(FRAMEWORKS)


def test_packages_live_where_the_design_says() -> None:
    import tracespec.adapters
    import tracespec.cli
    import tracespec.schema

    assert tracespec.cli.__file__.replace("\\", "/").endswith("/cli/__init__.py")
    assert tracespec.adapters.__file__.replace("\\", "/").endswith("/adapters/__init__.py")
    from importlib import resources

    names = {p.name for p in resources.files("tracespec.schema").iterdir()}
    assert {"manifest.schema.json", "part.schema.json"} <= names


def test_public_api_is_sorted_and_present() -> None:
    import tracespec

    assert tracespec.__all__ == sorted(tracespec.__all__)
    assert all(hasattr(tracespec, name) for name in tracespec.__all__)
