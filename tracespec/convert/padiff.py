"""Convert PaDiff legacy dumps into traces (``tests/data/padiff_corpus/FORMAT.md`` describes them).

Constraints:
- Every layout and generation: ``<model>/step_N/rank_M/`` (v1, v2), ``<model>/step_N/`` (v0),
  ``<model>/auto_diff/``, and ``<model>/`` itself (v3 ``PaDiffGuard``, or any one dump folder).
  ``tree`` as a dict (v0) or a list of roots (one per top-level call); ``fwd_outputs`` entries as
  path strings (v0, v1) or dicts (v2, v3).
- Paths in the JSON are absolute paths of another machine. Only their base name is used, looked
  up in ``tensors/``, ``weights/`` or ``grads/`` next to the JSON file; a name that is not a plain
  file name, or a file that resolves outside the dump folder (a symlink), is refused.
  ``.npy`` files are read with ``allow_pickle=False``.
- The JSON ``dtype`` string is trusted over the ``.npy`` dtype: Paddle bfloat16 saved as uint16
  bits becomes bfloat16 with identical bits; a v3 float32 copy of a bfloat16 output is cast back.
  Parameters carry no dtype string: a Paddle ``uint16`` parameter is bfloat16 (Paddle has no
  uint16 type).
- A partial dump converts what exists. What is missing (files, referenced tensors) and what was
  assumed is listed precisely, in the result and in the manifest's ``source``.
- Mapping onto the trace conventions: the root's route (the model name) is stripped, so the root
  is ``""``; PaDiff ``api`` nodes become ``kind="op"`` nodes routed ``<parent>.<api>#<k>``, the
  k-th call of that API inside one call of the parent, ``<api>`` being its qualified name with
  ``_`` for dots (``attn.torch_matmul#1``), class name its last part (``matmul``); ``fwd_outputs`` -> ``output``,
  ``bwd_grads`` (gradients w.r.t. the inputs) -> ``grad_input``; ``params.json`` ->
  ``parameter`` / ``parameter_grad``; ``weights.json`` (written after ``optimizer.step()``) ->
  stage ``update``. Forward calls are ordered by ``metas.fwd_step`` (completion order).
  PaDiff records no backward order: backward calls are placed in reverse forward order, and the
  manifest says so.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Final

import ml_dtypes
import numpy as np

from tracespec.errors import InputFileError
from tracespec.format.dtypes import DTYPES
from tracespec.storage import TraceWriter, replace_manifest_source

__all__ = ["DumpFolder", "PadiffConversion", "convert_padiff", "locate_padiff_dumps"]

_STEP: Final = re.compile(r"^step_(\d+)$")
_RANK: Final = re.compile(r"^rank_(\d+)$")
_NPY_NAME: Final = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*\.npy$")
_JSON_FILES: Final = ("report.json", "params.json", "weights.json", "grads.json")
_TENSOR_DIRS: Final = ("tensors", "weights", "grads")
# Dumps carry no PaDiff version; each generation of the format dates the code that wrote it
# (FORMAT.md section 0, from the history of padiff/dump_tools.py).
_GENERATION_VERSIONS: Final = {
    "v0": "PaDiff eae9470 (2023-06-14) to before 861e2e5: tree is one node, step_N/ folders",
    "v1": "PaDiff 861e2e5 (2023-07-05, distributed PaDiff) to before 6d6ae08: tensor paths as strings",
    "v2": "PaDiff 6d6ae08 (2024-02-20) to 0a86a80, version string 0.3.0: tensor entries as objects",
    "v3": "PaDiff 2025 refactor (PaDiffGuard): init_weights/, first_input/",
}
# Aliases PaDiff's frameworks print for dtypes, beyond the spec names themselves.
# (Paddle's legacy ``VarType.FP32`` names included.)
_DTYPE_ALIASES: Final = {
    "float": "float32",
    "double": "float64",
    "half": "float16",
    "long": "int64",
    "int": "int32",
    "fp32": "float32",
    "fp64": "float64",
    "fp16": "float16",
    "bf16": "bfloat16",
}


@dataclass(frozen=True, slots=True)
class DumpFolder:
    """One folder of PaDiff JSON files: one step of one rank."""

    path: Path
    step: int
    rank: int


@dataclass
class PadiffConversion:
    """What a conversion read, wrote, and could not find."""

    out: str  # the trace written: a folder or a URL
    source: dict[str, Any]
    records: int = 0

    @property
    def missing(self) -> list[str]:
        return list(self.source["missing"])

    @property
    def notes(self) -> list[str]:
        return list(self.source["notes"])

    @property
    def partial(self) -> bool:
        return bool(self.source["missing"])

    def summary(self) -> str:
        s = self.source
        text = (
            f"{self.out}: converted PaDiff dump {s['model_name']!r} ({s['framework']}, "
            f"generation {'/'.join(s['padiff_generation']) or 'unknown (no report.json)'}, layout {s['layout']}): "
            f"steps {s['steps']}, ranks {s['ranks']}, {self.records} tensor records"
        )
        if self.partial:
            text += "\nPARTIAL DUMP, missing:\n" + "\n".join(f"  - {m}" for m in s["missing"])
        if s["notes"]:
            text += "\nnotes:\n" + "\n".join(f"  - {n}" for n in s["notes"])
        return text


# --------------------------------------------------------------------------- locating


def locate_padiff_dumps(root: str | Path) -> tuple[str, list[DumpFolder]]:
    """The layout of the dump at ``root`` and its dump folders, steps sorted numerically."""
    folder = Path(root)
    if not folder.is_dir():
        raise InputFileError(f"{folder}: not a folder; give the PaDiff dump folder <dump root>/<model name>")
    children = {c.name: c for c in folder.iterdir()}
    steps = {int(m.group(1)): c for name, c in children.items() if (m := _STEP.match(name)) and c.is_dir()}
    if steps:
        dirs: list[DumpFolder] = []
        layouts = set()
        for step_number, step_dir in sorted(steps.items()):
            ranks = {int(m.group(1)): c for c in step_dir.iterdir() if (m := _RANK.match(c.name)) and c.is_dir()}
            if ranks:
                layouts.add("step_N/rank_M")
                dirs += [DumpFolder(path, step_number, rank) for rank, path in sorted(ranks.items())]
            elif _has_json(step_dir):
                layouts.add("step_N (v0)")
                dirs.append(DumpFolder(step_dir, step_number, 0))
        if not dirs:
            raise InputFileError(f"{folder}: step_* folders hold no PaDiff JSON files")
        return " + ".join(sorted(layouts)), dirs
    if "auto_diff" in children and _has_json(children["auto_diff"]):
        return "auto_diff", [DumpFolder(children["auto_diff"], 0, 0)]
    if _has_json(folder):
        rank = _RANK.match(folder.name)
        step = _STEP.match(folder.parent.name if rank else folder.name)
        layout = "single folder" if (rank or step or folder.name == "auto_diff") else "flat (PaDiffGuard, v3)"
        return layout, [DumpFolder(folder, int(step.group(1)) if step else 0, int(rank.group(1)) if rank else 0)]
    models = sorted(
        name for name, c in children.items() if c.is_dir() and (_has_json(c) or any(_STEP.match(g.name) for g in c.iterdir()))
    )
    if len(models) == 1:  # the dump root of a single model
        return locate_padiff_dumps(folder / models[0])
    if models:
        raise InputFileError(
            f"{folder}: holds the dumps of several models ({', '.join(models)}); convert one: {folder / models[0]}"
        )
    raise InputFileError(f"{folder}: no PaDiff dump here (no report.json, params.json, step_N/ or auto_diff/)")


def _has_json(folder: Path) -> bool:
    return any((folder / name).is_file() for name in _JSON_FILES)


# --------------------------------------------------------------------------- reading


def _read_json(path: Path, where: str) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_bytes())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputFileError(f"{where}: not readable JSON ({exc})") from None
    if not isinstance(doc, dict) or "tree" not in doc:
        raise InputFileError(f"{where}: not a PaDiff dump file (no 'tree')")
    _check_tree(doc["tree"], where)
    return doc


# What each node key must be, where present: the converter relies on nothing else.
_NODE_KEYS: Final = {
    "children": list,
    "fwd_outputs": list,
    "bwd_grads": list,
    "weights": dict,
    "grads": dict,
    "metas": dict,
}


def _check_tree(tree: object, where: str) -> None:
    """Every node is an object whose containers have the right types (the file is untrusted)."""
    roots = tree if isinstance(tree, list) else [tree]
    stack = list(roots)
    while stack:
        node = stack.pop()
        if not isinstance(node, dict):
            raise InputFileError(f"{where}: a tree node is {type(node).__name__}, expected an object")
        for key, kind in _NODE_KEYS.items():
            if node.get(key) is not None and not isinstance(node[key], kind):
                raise InputFileError(
                    f"{where}: node {str(node.get('route'))[:80]!r}: {key!r} is {type(node[key]).__name__}, expected {kind.__name__}"
                )
        for key in ("route", "name", "type"):
            if node.get(key) is not None and not isinstance(node[key], str):
                raise InputFileError(f"{where}: a node's {key!r} is not a string")
        stack.extend(node.get("children") or [])


def _parse_shape(text: object) -> tuple[int, ...] | None:
    """``"paddle.Size([4, 8])"``, ``"torch.Size([4, 8])"`` or ``"[4, 8]"`` -> (4, 8)."""
    if not isinstance(text, str) or "[" not in text:
        return None
    inside = text[text.index("[") + 1 : text.rindex("]")] if "]" in text else ""
    return tuple(int(d) for d in re.findall(r"\d+", inside))


def _spec_dtype(text: object) -> str | None:
    """``"paddle.bfloat16"`` / ``"torch.float32"`` -> the spec name, or None if unknown."""
    if not isinstance(text, str):
        return None
    name = text.rsplit(".", 1)[-1].lower()
    name = _DTYPE_ALIASES.get(name, name)
    return name if name in DTYPES else None


class _Converter:
    """Converts the dump folders of one rank into one ``TraceWriter``."""

    def __init__(self, root: Path, source: dict[str, Any]) -> None:
        self.root = root.resolve()
        self.source = source
        self.missing: list[str] = source["missing"]
        self.notes: list[str] = source["notes"]
        self.records = 0

    def rel(self, path: Path) -> str:
        try:
            return str(path.resolve().relative_to(self.root))
        except ValueError:
            return str(path)

    # ------------------------------------------------------------------ npy files
    def load(self, folder: Path, subdir: str, recorded: object, what: str) -> np.ndarray | None:
        """The array a JSON path names, found by base name in ``folder/subdir``; None if missing."""
        if not isinstance(recorded, str) or not recorded:
            self.missing.append(f"{self.rel(folder)}: {what}: no file path in the JSON ({recorded!r:.60})")
            return None
        name = PureWindowsPath(recorded).name if "\\" in recorded else PurePosixPath(recorded).name
        if not _NPY_NAME.match(name):
            raise InputFileError(f"{self.rel(folder)}: {what}: refusing tensor path {recorded!r:.120} (not a .npy file name)")
        path = folder / subdir / name
        resolved = path.resolve()
        if not resolved.is_relative_to(folder.resolve()):
            raise InputFileError(f"{self.rel(folder)}/{subdir}/{name}: resolves outside the dump folder; refusing to follow it")
        if not resolved.is_file():
            self.missing.append(f"{self.rel(folder)}/{subdir}/{name} ({what})")
            return None
        try:
            array: np.ndarray = np.load(resolved, allow_pickle=False, mmap_mode="r")
            return array
        except (ValueError, OSError, EOFError) as exc:
            raise InputFileError(f"{self.rel(path)}: not a plain .npy array ({exc})") from None

    def restore(self, array: np.ndarray, recorded_dtype: object, shape_text: object, where: str) -> np.ndarray:
        """Apply the JSON's dtype (trusted over the npy's) and, for empty tensors, its shape."""
        target = _spec_dtype(recorded_dtype)
        if recorded_dtype is not None and target is None:
            self.notes.append(f"{where}: unknown dtype {recorded_dtype!r}; kept the .npy dtype {array.dtype}")
        if target is None or target == array.dtype.name:
            result = array
        elif target == "bfloat16" and array.dtype == np.uint16:
            result = array.view(ml_dtypes.bfloat16)  # PaDiff saved the raw bits
        elif target == "bfloat16" and array.dtype == np.float32:
            result = array.astype(ml_dtypes.bfloat16)  # v3 upcast bf16 outputs to float32: exact back
            self.source["assumptions"]["bfloat16_from_float32"] = True
        else:
            self.notes.append(f"{where}: the JSON says {recorded_dtype}, the .npy holds {array.dtype}; cast to {target}")
            result = array.astype(DTYPES[target].numpy)
        shape = _parse_shape(shape_text)
        if shape is not None and shape != result.shape:
            if result.size == 0 and 0 in shape:
                result = result.reshape(shape)
            else:
                self.notes.append(
                    f"{where}: the JSON says shape {list(shape)}, the .npy holds {list(result.shape)}; kept the .npy shape"
                )
        return result

    def orphans(self, folder: Path, referenced: dict[str, set[str]]) -> None:
        for subdir in _TENSOR_DIRS:
            present = {p.name for p in (folder / subdir).glob("*.npy")} if (folder / subdir).is_dir() else set()
            extra = sorted(present - referenced.get(subdir, set()), key=_natural)
            if extra:
                shown = ", ".join(extra[:8]) + (f" and {len(extra) - 8} more" if len(extra) > 8 else "")
                self.notes.append(
                    f"{self.rel(folder)}/{subdir}/: {len(extra)} .npy file(s) that no JSON names, not converted "
                    f"(their node and role are unknown): {shown}"
                )


def _natural(name: str) -> tuple[Any, ...]:
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name))


def _referenced_names(doc: dict[str, Any]) -> dict[str, set[str]]:
    """Base names of every .npy a JSON document names, by sub-folder."""
    names: dict[str, set[str]] = {}

    def add(value: object) -> None:
        path = value.get("path") if isinstance(value, dict) else value
        if isinstance(path, str):
            pure = PureWindowsPath(path) if "\\" in path else PurePosixPath(path)
            names.setdefault(pure.parent.name, set()).add(pure.name)

    for node in _walk(doc["tree"]):
        for key in ("fwd_outputs", "bwd_grads"):
            for item in node.get(key) or []:
                add(item)
        for key in ("weights", "grads"):
            for value in (node.get(key) or {}).values():
                add(value)
    return names


def _walk(tree: object) -> Iterator[dict[str, Any]]:
    stack = list(reversed(tree)) if isinstance(tree, list) else [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            yield node
            stack.extend(reversed(node.get("children") or []))


# --------------------------------------------------------------------------- the module tree


@dataclass
class _TreeNode:
    route: str
    class_name: str
    kind: str
    parent: str | None
    attrs: dict[str, Any]
    children: list[str] = field(default_factory=list)
    node_id: int = -1


class _Tree:
    """The union of the params trees (registration order) and the report trees (call order)."""

    def __init__(self) -> None:
        self.nodes: dict[str, _TreeNode] = {}

    def add(self, route: str, class_name: str, kind: str, parent: str | None, attrs: dict[str, Any]) -> None:
        if route in self.nodes:  # a module shared under two names keeps its first
            return
        self.nodes[route] = _TreeNode(route, class_name, kind, parent, attrs)
        if parent is not None:
            self.nodes[parent].children.append(route)

    def write(self, writer: Any) -> None:
        stack = [(route, 0) for route, n in self.nodes.items() if n.parent is None][::-1]
        while stack:
            route, position = stack.pop()
            node = self.nodes[route]
            parent = self.nodes[node.parent].node_id if node.parent is not None else None
            node.node_id = writer.add_node(
                route, node.class_name, parent=parent, kind=node.kind, position=position, attrs=node.attrs or None
            )
            stack.extend(reversed([(child, i) for i, child in enumerate(node.children)]))


def _strip_root(route: object, root_route: str) -> str:
    if not isinstance(route, str) or route == root_route:
        return ""
    prefix = root_route + "."
    return route[len(prefix) :] if route.startswith(prefix) else route


def _api_names(node: dict[str, Any]) -> tuple[str, str]:
    """(route component, class name) of an API node: ``torch.Tensor.permute`` ->
    (``torch_Tensor_permute``, ``permute``).

    The component keeps the framework's qualified name (without dots, which separate routes),
    so API calls of two frameworks never pair by route: ``torch.Tensor.transpose`` and
    ``paddle.Tensor.transpose`` do different things; structural alignment pairs them instead.
    """
    qualified = str(node.get("name") or "api")
    return re.sub(r"[^A-Za-z0-9_]", "_", qualified), qualified.rsplit(".", 1)[-1]


def _child_order(children: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Children in completion order (``metas.fwd_step``); call order where it is missing."""

    def key(item: tuple[int, dict[str, Any]]) -> tuple[float, int]:
        metas = item[1].get("metas") or {}
        step = metas.get("fwd_step")
        return (float(step) if isinstance(step, (int, float)) else float("inf"), item[0])

    return [child for _, child in sorted(enumerate(children), key=key)]


@dataclass
class _Call:
    """One node occurrence of a report tree, with its trace route and call index."""

    route: str
    call: int
    node: dict[str, Any]
    begin: int
    end: int
    children: list[_Call]


def _report_calls(doc: dict[str, Any], tree: _Tree | None) -> list[_Call]:
    """The calls of a report, with routes, call indices and forward event counters.

    With ``tree``, also adds the report's nodes to it.
    """
    roots = doc["tree"] if isinstance(doc["tree"], list) else [doc["tree"]]
    root_route = str(roots[0].get("route", "")) if roots else ""
    counters: dict[str, int] = {}
    event = 0

    def visit(node: dict[str, Any]) -> _Call:
        nonlocal event
        if node.get("type") == "api":
            route = ""  # set by the parent, which numbers its API calls
        else:
            route = _strip_root(node.get("route"), root_route)
        call = _Call(route, 0, node, event, -1, [])
        event += 1
        api_seen: dict[str, int] = {}
        for child in _child_order(list(node.get("children") or [])):
            if child.get("type") == "api":
                component, class_name = _api_names(child)
                k = api_seen[component] = api_seen.get(component, -1) + 1
                child_route = f"{route}.{component}#{k}" if route else f"{component}#{k}"
                if tree is not None:
                    tree.add(child_route, class_name, "op", route, {"padiff_api": child.get("name")})
                sub = visit(child)
                sub.route = child_route
            else:
                child_route = _strip_root(child.get("route"), root_route)
                if tree is not None:
                    tree.add(child_route, str(child.get("name", "")), "module", route, _module_attrs(child))
                sub = visit(child)
            call.children.append(sub)
        call.end = event
        event += 1
        return call

    calls = []
    for root in roots:
        if tree is not None:
            tree.add("", str(root.get("name", "")), "module", None, _module_attrs(root))
        calls.append(visit(root))
    # call indices in begin order, per route
    for item in _preorder(calls):
        item.call = counters.get(item.route, 0)
        counters[item.route] = item.call + 1
    return calls


def _preorder(calls: list[_Call]) -> Iterator[_Call]:
    stack = list(reversed(calls))
    while stack:
        item = stack.pop()
        yield item
        stack.extend(reversed(item.children))


def _module_attrs(node: dict[str, Any]) -> dict[str, Any]:
    attrs: dict[str, Any] = {}
    if isinstance(node.get("route"), str):
        attrs["padiff_route"] = node["route"]
    metas = node.get("metas") or {}
    if "net_id" in metas:
        attrs["net_id"] = metas["net_id"]
    if isinstance(node.get("repr"), str):
        attrs["repr"] = node["repr"]
    return attrs


def _add_params_tree(doc: dict[str, Any], tree: _Tree) -> None:
    root = doc["tree"]
    root_route = str(root.get("route", ""))
    tree.add("", str(root.get("name", "")), "module", None, _module_attrs(root))
    stack = [(root, "")]
    while stack:
        node, route = stack.pop()
        for child in node.get("children") or []:
            child_route = _strip_root(child.get("route"), root_route)
            tree.add(child_route, str(child.get("name", "")), "module", route, _module_attrs(child))
        stack.extend(reversed([(c, _strip_root(c.get("route"), root_route)) for c in node.get("children") or []]))


def _generation(doc: dict[str, Any]) -> str:
    if "has_init_weights" in doc:
        return "v3"
    if isinstance(doc["tree"], dict):
        return "v0"
    for node in _walk(doc["tree"]):
        for item in list(node.get("fwd_outputs") or []) + list(node.get("bwd_grads") or []):
            return "v2" if isinstance(item, dict) else "v1"
    return "v1"


# --------------------------------------------------------------------------- conversion


def convert_padiff(
    dump: str | Path,
    out: str | Path,
    *,
    update_weights: str | Path | None = None,
    overwrite: bool = False,
    durable: bool = True,
) -> PadiffConversion:
    """Convert the PaDiff dump of one model (``<dump root>/<model name>``) into a trace at ``out``.

    ``update_weights`` is an optional second dump folder of the same model holding
    ``weights.json`` files written after ``optimizer.step()`` (same step/rank layout); they
    become stage ``update``. ``weights.json`` files inside ``dump`` are used the same way.
    ``overwrite`` and ``durable`` are passed to :class:`~tracespec.TraceWriter`.
    """
    root = Path(dump)
    layout, dirs = locate_padiff_dumps(root)
    extra_dirs: list[DumpFolder] = []
    if update_weights is not None:
        extra_dirs = locate_padiff_dumps(update_weights)[1]
    docs: dict[tuple[Path, str], dict[str, Any]] = {}
    for d in [*dirs, *extra_dirs]:
        for name in _JSON_FILES:
            if (d.path / name).is_file():
                doc = _read_json(d.path / name, str(d.path / name))
                for node in _walk(doc["tree"]):
                    node.pop("stack", None)  # half of report.json, never needed
                docs[(d.path, name)] = doc
    if not docs:
        raise InputFileError(f"{root}: no PaDiff JSON file could be read")
    frameworks = {str(doc.get("framework") or "unknown") for doc in docs.values()}
    models = {str(doc.get("model_name")) for doc in docs.values()}
    if len(frameworks) != 1 or len(models) != 1:
        raise InputFileError(
            f"{root}: the JSON files disagree on the model ({sorted(models)}) or framework ({sorted(frameworks)})"
        )
    framework, model_name = frameworks.pop(), models.pop()
    ranks = sorted({d.rank for d in dirs})
    source: dict[str, Any] = {
        "kind": "padiff",
        "dump": str(root.resolve()),
        "update_weights": str(Path(update_weights).resolve()) if update_weights is not None else None,
        "layout": layout,
        "padiff_generation": sorted({_generation(doc) for (_, name), doc in docs.items() if name == "report.json"}),
        "padiff_version": [],
        "model_name": model_name,
        "framework": framework,
        "steps": sorted({d.step for d in dirs}),
        "ranks": ranks,
        "files": [],
        "layer_map": None,
        "missing": [],
        "notes": [],
        "assumptions": {
            "backward_call_order": "reconstructed as the reverse of the forward call order (PaDiff does not record it)",
            "grad_input_slots": "the i-th gradient PaDiff recorded for the layer's positional inputs",
        },
    }
    source["padiff_version"] = [_GENERATION_VERSIONS[g] for g in source["padiff_generation"]]
    for (folder, name), doc in docs.items():
        from_update = update_weights is not None and any(folder == d.path for d in extra_dirs)
        base = Path(update_weights if from_update and update_weights is not None else root)
        try:
            rel = str(folder.resolve().relative_to(base.resolve()) / name)
        except ValueError:
            rel = str(folder / name)
        source["files"].append(
            {"file": rel, "origin": "update_weights" if from_update else "dump", "file_path": doc.get("file_path")}
        )
        layer_map = doc.get("layer_map")
        if isinstance(layer_map, dict) and any(layer_map.values()):
            source["layer_map"] = layer_map
    steps_present = source["steps"]
    if len(steps_present) > 1 and steps_present != list(range(steps_present[0], steps_present[-1] + 1)):
        source["notes"].append(f"steps {steps_present} only: PaDiff's dump_freq skipped the others")

    world_size = max(ranks) + 1  # PaDiff records no world size: the highest rank seen
    for step in source["steps"]:
        absent = sorted(set(range(world_size)) - {d.rank for d in dirs if d.step == step})
        if absent:
            source["missing"].append(f"step_{step}: no folder for rank(s) {absent} (the dump has ranks up to {world_size - 1})")
    converter = _Converter(root, source)
    writers = []
    try:
        for rank in ranks:
            rank_dirs = [d for d in dirs if d.rank == rank]
            rank_updates = [d for d in extra_dirs if d.rank == rank]
            tree = _Tree()
            for d in [*rank_dirs, *rank_updates]:
                for name in ("params.json", "weights.json", "grads.json"):
                    if (d.path, name) in docs:
                        _add_params_tree(docs[(d.path, name)], tree)
                if (d.path, "report.json") in docs:
                    _report_calls(docs[(d.path, "report.json")], tree)
            writer = TraceWriter(
                out, framework=framework, rank=rank, world_size=world_size, source=source, overwrite=overwrite, durable=durable
            )
            writers.append(writer)
            tree.write(writer)
            routes = {route: n.node_id for route, n in tree.nodes.items()}
            steps = sorted({d.step for d in [*rank_dirs, *rank_updates]})
            for step in steps:
                for d in rank_dirs:
                    if d.step == step:
                        _FolderConversion(converter, writer, routes, d).dump(docs, layout)
                for d in rank_updates:
                    if d.step == step:
                        _FolderConversion(converter, writer, routes, d).update(docs)
                writer.end_step(step)
        for writer in writers:
            writer.close()
    except BaseException:
        for writer in writers:
            writer.abort()
        raise
    replace_manifest_source(out, source, durable=durable)  # what was missing is known only now
    return PadiffConversion(str(out), source, converter.records)


class _FolderConversion:
    """Converts one dump folder (one step of one rank) into the part of that rank."""

    def __init__(self, conv: _Converter, writer: TraceWriter, routes: dict[str, int], folder: DumpFolder) -> None:
        self.conv, self.writer, self.routes, self.folder = conv, writer, routes, folder
        self.where = conv.rel(folder.path)

    def _add_array(self, array: np.ndarray, **where: Any) -> None:
        self.writer.add_tensor(step=self.folder.step, array=array, **where)
        self.conv.records += 1

    def dump(self, docs: dict[tuple[Path, str], dict[str, Any]], layout: str) -> None:
        """Everything of a dump folder: report.json, params.json, weights.json and grads.json."""
        d, conv, where = self.folder, self.conv, self.where
        report = docs.get((d.path, "report.json"))
        params = docs.get((d.path, "params.json"))
        weights = docs.get((d.path, "weights.json"))
        grads = docs.get((d.path, "grads.json"))
        referenced: dict[str, set[str]] = {}
        for doc in (report, params, weights, grads):
            if doc is not None:
                for sub, names in _referenced_names(doc).items():
                    referenced.setdefault(sub, set()).update(names)
        if report is None:
            conv.missing.append(
                f"{where}/report.json: missing, so no forward outputs, input gradients or call order for step {d.step}, "
                f"rank {d.rank}"
                + (" (params.json is written first: the PaDiff run crashed while dumping)" if params is not None else "")
            )
        else:
            self.report(report)
        if params is None and layout != "auto_diff":
            conv.missing.append(f"{where}/params.json: missing, so no parameters or parameter gradients for step {d.step}")
        if params is not None:
            if weights is not None:
                conv.notes.append(
                    f"{where}: params.json and weights.json share weights/, which PaDiff rewrites on every dump: "
                    "the forward parameters of params.json were overwritten; only weights.json (stage update) is converted"
                )
            self.parameters(params, stage_weights=None if weights is not None else "forward", grads=grads is None)
        if weights is not None:
            self.parameters(weights, stage_weights="update", grads=False)
        if grads is not None:
            self.parameters(grads, stage_weights=None, grads=True)
        if report is not None and (report.get("has_init_weights") or report.get("has_first_input")):
            self.v3_extras(report, params is not None)
        conv.orphans(d.path, referenced)

    def update(self, docs: dict[tuple[Path, str], dict[str, Any]]) -> None:
        """A folder of the ``update_weights`` dump: its weights.json, as stage ``update``."""
        d = self.folder
        weights = docs.get((d.path, "weights.json"))
        if weights is None:
            self.conv.missing.append(f"{d.path}: no weights.json for step {d.step}, rank {d.rank}")
            return
        self.parameters(weights, stage_weights="update", grads=False)

    def report(self, report: dict[str, Any]) -> None:
        calls = _report_calls(report, None)
        step, where = self.folder.step, self.where
        for item in _preorder(calls):
            self.writer.add_call(
                step=step, stage="forward", node=self.routes[item.route], call=item.call, begin=item.begin, end=item.end
            )
        backward = _backward_events(calls)
        for item in _preorder(calls):
            node, label = self.routes[item.route], item.route or "(root)"
            for slot, entry in enumerate(item.node.get("fwd_outputs") or []):
                self._report_tensor(
                    node, item.call, "forward", "output", slot, entry, f"{where}: output {slot} of {label} call {item.call}"
                )
            grads = item.node.get("bwd_grads") or []
            if grads:
                begin, end = backward[id(item)]
                self.writer.add_call(step=step, stage="backward", node=node, call=item.call, begin=begin, end=end)
            for slot, entry in enumerate(grads):
                self._report_tensor(
                    node,
                    item.call,
                    "backward",
                    "grad_input",
                    slot,
                    entry,
                    f"{where}: input gradient {slot} of {label} call {item.call}",
                )

    def _report_tensor(self, node: int, call: int, stage: str, role: str, slot: int, entry: object, what: str) -> None:
        if isinstance(entry, dict):
            path, dtype, shape = entry.get("path"), entry.get("dtype"), entry.get("shape")
        else:
            path, dtype, shape = entry, None, None
        array = self.conv.load(self.folder.path, "tensors", path, what)
        if array is not None:
            array = self.conv.restore(array, dtype, shape, what)
            self._add_array(array, stage=stage, node=node, call=call, role=role, slot=str(slot))

    def parameters(self, doc: dict[str, Any], *, stage_weights: str | None, grads: bool) -> None:
        root = doc["tree"] if isinstance(doc["tree"], dict) else {}
        root_route = str(root.get("route", ""))
        framework = str(doc.get("framework"))
        for node in _walk(root):
            route = _strip_root(node.get("route"), root_route)
            node_id = self.routes[route]
            if not node.get("available", True):
                continue
            prefix = f"{route}." if route else ""
            if stage_weights is not None:
                for slot, path in (node.get("weights") or {}).items():
                    what = f"{self.where}: parameter {prefix}{slot}"
                    array = self.conv.load(self.folder.path, "weights", path, what)
                    if array is not None:
                        self._add_array(
                            self._parameter_dtype(array, framework),
                            stage=stage_weights,
                            node=node_id,
                            role="parameter",
                            slot=slot,
                        )
            if grads:
                for slot, path in (node.get("grads") or {}).items():
                    if path is None:  # PaDiff writes null for a parameter without gradient
                        self.writer.add_value(
                            step=self.folder.step, stage="backward", node=node_id, role="parameter_grad", slot=slot, value=None
                        )
                        continue
                    what = f"{self.where}: gradient of {prefix}{slot}"
                    array = self.conv.load(self.folder.path, "grads", path, what)
                    if array is not None:
                        self._add_array(
                            self._parameter_dtype(array, framework),
                            stage="backward",
                            node=node_id,
                            role="parameter_grad",
                            slot=slot,
                        )

    def _parameter_dtype(self, array: np.ndarray, framework: str) -> np.ndarray:
        if framework == "paddle" and array.dtype == np.uint16:
            self.conv.source["assumptions"]["paddle_uint16_is_bfloat16"] = (
                "parameters carry no dtype string; Paddle has no uint16 type, so uint16 .npy files are bfloat16 bits"
            )
            return array.view(ml_dtypes.bfloat16)
        return array

    def v3_extras(self, report: dict[str, Any], has_params: bool) -> None:
        """v3 (2025) ``init_weights/`` and ``first_input/`` folders, named relative to the report."""
        conv, d, where = self.conv, self.folder, self.where
        if report.get("has_init_weights"):
            folder = _inside(conv, d.path, report.get("init_weights_dir", "init_weights"))
            if has_params:
                conv.notes.append(f"{where}: init_weights/ not converted: params.json already holds the parameters of this step")
            elif folder is not None:
                for path in sorted(folder.glob("*.npy"), key=lambda p: _natural(p.name)):
                    route, _, slot = path.name[: -len(".npy")].rpartition(".")
                    if route not in self.routes:
                        conv.notes.append(f"{where}: init_weights/{path.name} names no module of the tree; skipped")
                        continue
                    array = conv.load(folder.parent, folder.name, path.name, f"{where}: initial weight {path.name}")
                    if array is not None:
                        self._add_array(array, stage="forward", node=self.routes[route], role="parameter", slot=slot)
        if report.get("has_first_input"):
            folder = _inside(conv, d.path, report.get("first_input_dir", "first_input"))
            count = report.get("first_input_count")
            if folder is not None and isinstance(count, int):
                for i in range(count):
                    if (folder / f"input_{i}.npy").is_file():
                        array = conv.load(folder.parent, folder.name, f"input_{i}.npy", f"{where}: model input {i}")
                        if array is not None:
                            self._add_array(array, stage="forward", node=self.routes[""], call=0, role="input", slot=str(i))
                    elif (folder / f"input_{i}.json").is_file():
                        value = json.loads((folder / f"input_{i}.json").read_text())
                        self.writer.add_value(
                            step=d.step,
                            stage="forward",
                            node=self.routes[""],
                            call=0,
                            role="input",
                            slot=str(i),
                            value=value.get("data") if isinstance(value, dict) else value,
                        )
                    else:
                        conv.missing.append(f"{where}/{folder.name}/input_{i}.npy (model input {i})")


def _backward_events(calls: list[_Call]) -> dict[int, tuple[int, int]]:
    """Backward begin/end counters for calls that have input gradients, in reverse forward order."""
    events: dict[int, tuple[int, int]] = {}
    counter = 0

    def visit(item: _Call) -> None:
        nonlocal counter
        has = bool(item.node.get("bwd_grads"))
        begin = counter
        if has:
            counter += 1
        for child in reversed(item.children):
            visit(child)
        if has:
            events[id(item)] = (begin, counter)
            counter += 1

    for root in reversed(calls):
        visit(root)
    return events


def _inside(conv: _Converter, folder: Path, name: object) -> Path | None:
    if not isinstance(name, str) or not re.match(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$", name):
        raise InputFileError(f"{conv.rel(folder)}: refusing folder name {name!r:.80} from report.json")
    path = folder / name
    if not path.is_dir():
        conv.missing.append(f"{conv.rel(folder)}/{name}/ (report.json says it exists)")
        return None
    if not path.resolve().is_relative_to(folder.resolve()):
        raise InputFileError(f"{conv.rel(path)}: resolves outside the dump folder; refusing to follow it")
    return path
