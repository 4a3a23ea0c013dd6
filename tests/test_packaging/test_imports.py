"""Packaging: the core and the CLI never import a framework; the layout installs as designed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
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
    done = subprocess.run(
        [str(script), "--help"], capture_output=True, text=True, env={**os.environ, "PYTHONPROFILEIMPORTTIME": "1"}
    )
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


def test_the_wheel_holds_every_module_of_the_source_tree(tmp_path: Path) -> None:
    """A user installs the wheel, not the editable checkout: a subpackage missing from pyproject's
    package list would import here and fail there."""
    root = Path(__file__).resolve().parents[2]
    sources = tmp_path / "sources"  # a copy: setuptools reuses a stale build/ folder in the checkout
    for name in ("pyproject.toml", "README.md", "tracespec", "adapters", "cli", "spec/v1/schema"):
        copy = shutil.copytree if (root / name).is_dir() else shutil.copy
        (sources / name).parent.mkdir(parents=True, exist_ok=True)
        copy(root / name, sources / name)
    build = "import sys; from setuptools import build_meta; build_meta.build_wheel(sys.argv[1])"
    done = subprocess.run([sys.executable, "-c", build, str(tmp_path)], cwd=sources, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    (wheel,) = tmp_path.glob("tracespec-*.whl")
    in_wheel = {name for name in zipfile.ZipFile(wheel).namelist() if name.endswith((".py", ".json", ".typed"))}
    layout = {
        "tracespec": "tracespec",
        "adapters": "tracespec/adapters",
        "cli": "tracespec/cli",
        "spec/v1/schema": "tracespec/schema",
    }
    expected = {
        f"{installed}/{path.relative_to(root / folder).as_posix()}"
        for folder, installed in layout.items()
        for path in (root / folder).rglob("*")
        if path.suffix in {".py", ".json", ".typed"} and "__pycache__" not in path.parts
    }
    assert sorted(expected - in_wheel) == []


def test_tracespec_compare_is_the_package_and_the_function(tmp_path: Path) -> None:
    """``tracespec.compare(a, b)`` is the documented call; the name must not hide the subpackage."""
    code = (
        "import tracespec, types\n"
        "import tracespec.compare as by_import\n"
        "assert by_import is tracespec.compare and isinstance(by_import, types.ModuleType)\n"
        "assert tracespec.compare.engine.compare_traces is tracespec.compare.compare_traces\n"
        "import numpy as np\n"
        "from tracespec.testing.synthetic import SyntheticRecorder\n"
        "for path in sys.argv[1:]:\n"
        "    with SyntheticRecorder(path) as rec, rec.forward(rec.module('', 'Net'), np.ones(3)) as call:\n"
        "        call.output(np.ones(3))\n"
        "print(tracespec.compare(*sys.argv[1:]).status)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", "import sys\n" + code, str(tmp_path / "a"), str(tmp_path / "b")], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "pass"
