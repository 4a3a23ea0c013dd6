"""The import direction of docs/architecture.md, read from every module's imports (AST): a layer
imports only layers below it, storage only through its package, and the core no framework."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Final

REPO = Path(__file__).resolve().parents[2]
PACKAGES: Final = {"tracespec": REPO / "tracespec", "tracespec.adapters": REPO / "adapters", "tracespec.cli": REPO / "cli"}

LAYERS: Final = {
    "_version": 0,
    "errors": 0,
    "schema": 0,
    "format": 1,
    "storage": 2,
    "adapters": 3,
    "compare": 3,
    "convert": 3,
    "nonfinite": 3,
    "report": 4,
    "testing": 5,
    "integrations": 5,
    "cli": 5,
}
"""docs/architecture.md: each part of the package and its layer; a part imports only lower layers."""

DISPLAY_DISPATCH: Final = {
    ("tracespec.compare.verdict", "tracespec.report.notebook"),
    ("tracespec.storage.reader", "tracespec.report.notebook"),
}
"""The one sanctioned upward arrow: Jupyter asks a Verdict or a Trace for its HTML
(``_repr_html_``), which only hands itself to the report layer, imported when called."""

FRAMEWORKS: Final = ("torch", "paddle", "onnx", "onnxruntime", "transformers", "accelerate", "tensorflow", "jax")
FRAMEWORK_LAYERS: Final = {"adapters", "integrations"}
"""Where a framework may be imported; everything else runs without one."""


def modules() -> dict[str, Path]:
    found = {}
    for package, root in PACKAGES.items():
        for path in root.rglob("*.py"):
            if "__pycache__" in path.parts:
                continue
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([package, *parts])] = path
    return found


def part(module: str) -> str:
    """``tracespec.compare.engine`` -> ``compare``; the package root -> ``""``."""
    return module.split(".")[1] if module.count(".") else ""


def imports(path: Path) -> list[tuple[str, int]]:
    """Every module imported by ``path``: (name, line); ``from x import y`` counts x and x.y."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, node.lineno))
    return found


def test_every_part_of_the_package_has_a_layer() -> None:
    assert {part(m) for m in modules()} - {""} <= set(LAYERS), "add the new part to LAYERS and docs/architecture.md"


def test_imports_run_downward() -> None:
    wrong = []
    for module, path in sorted(modules().items()):
        mine = part(module)
        for target, line in imports(path):
            if not target.startswith("tracespec") or (module, target) in DISPLAY_DISPATCH:
                continue
            theirs = part(target)
            where = f"{path.relative_to(REPO)}:{line}: {module} imports {target}"
            if mine == theirs:
                continue  # within one part
            if theirs == "":
                if mine and LAYERS[mine] < 5:
                    wrong.append(f"{where} (the package root imports every layer: only the top layer may import it)")
            elif mine and LAYERS[theirs] >= LAYERS[mine]:
                wrong.append(f"{where} (layer {LAYERS[theirs]} from layer {LAYERS[mine]})")
            elif theirs == "storage" and target != "tracespec.storage":
                wrong.append(f"{where} (outside storage, import the package tracespec.storage, not its modules)")
    assert not wrong, "\n".join(wrong)


def test_no_framework_outside_the_adapters_and_integrations() -> None:
    wrong = [
        f"{path.relative_to(REPO)}:{line}: {module} imports {target}"
        for module, path in sorted(modules().items())
        if part(module) not in FRAMEWORK_LAYERS
        for target, line in imports(path)
        if target.split(".")[0] in FRAMEWORKS
    ]
    assert not wrong, "\n".join(wrong)
