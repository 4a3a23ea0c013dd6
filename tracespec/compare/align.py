"""Align the module trees of two traces: which node of B computes what a node of A computes.

Constraints: pure functions over trace metadata (no tensor data, no framework import); the result
is deterministic and explains itself (every match says how it was found, every unmatched node why).

The pipeline, highest priority first:

1. the user's **layer map** (:func:`load_layer_map`): exact routes, globs, regexes, ignored routes,
   and per-mapping tensor transforms;
2. **exact routes**, after the layer map's prefix rules (strip / replace a prefix on either side);
3. **structural alignment** of each matched parent's remaining children, in execution order: a
   Myers diff (keep / insert / delete) whose "keep" means "same signature" (class name, call count,
   tensor shapes, never the name), followed by a "modify" pass that pairs a deleted and an
   inserted child of the same class or the same shapes (the allennlp ``diff`` seed's extension).
   A child left over on one side that has a single child is treated as a wrapper and replaced by
   that child before aligning again, so an extra ``Sequential`` around one layer aligns.

Known cross-framework layouts are applied as tensor transforms on B's side (:data:`LAYOUT_RULES`):
a Paddle ``Linear`` stores ``weight`` as ``[in, out]``, a PyTorch one as ``[out, in]``.
"""

from __future__ import annotations

import itertools
import math
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np

from tracespec.compare.view import RankView, Record
from tracespec.errors import InputFileError

__all__ = [
    "CLASS_ALIASES",
    "LAYOUT_RULES",
    "Alignment",
    "EditOp",
    "LayerMap",
    "Match",
    "Transform",
    "Unmatched",
    "align_trees",
    "diff_sequences",
    "load_layer_map",
    "parse_layer_map",
]

LAYOUT_RULES: Final[dict[tuple[str, str, str], str]] = {
    # (framework family, class name, parameter slot) -> how that framework lays the tensor out
    ("torch", "Linear", "weight"): "out_in",
    ("paddle", "Linear", "weight"): "in_out",
}
"""Native layouts of parameters that differ between frameworks. Where A's and B's layouts of a
matched pair differ, B's tensor is transposed (last two axes) before comparing."""

CLASS_ALIASES: Final[dict[tuple[str, str], str]] = {
    # (framework family, class name) -> the PyTorch name of the same building block
    ("paddle", "LayerList"): "ModuleList",
    ("paddle", "LayerDict"): "ModuleDict",
    ("paddle", "ParameterList"): "ParameterList",
    ("paddle", "Conv1D"): "Conv1d",
    ("paddle", "Conv2D"): "Conv2d",
    ("paddle", "Conv3D"): "Conv3d",
    ("paddle", "BatchNorm1D"): "BatchNorm1d",
    ("paddle", "BatchNorm2D"): "BatchNorm2d",
    ("paddle", "BatchNorm3D"): "BatchNorm3d",
    ("paddle", "MaxPool2D"): "MaxPool2d",
    ("paddle", "AvgPool2D"): "AvgPool2d",
    ("paddle", "AdaptiveAvgPool2D"): "AdaptiveAvgPool2d",
}
"""Class names that differ between frameworks for the same layer: structural alignment compares
the PyTorch name."""

PARAMETER_ROLES: Final = ("parameter", "parameter_grad")


# --------------------------------------------------------------------------- transforms
@dataclass(frozen=True, slots=True)
class Transform:
    """Operations that bring B's tensor into A's layout, applied in order."""

    ops: tuple[tuple[str, tuple[int, ...]], ...]

    def apply(self, array: np.ndarray) -> np.ndarray:
        for name, args in self.ops:
            if name == "transpose":
                array = np.swapaxes(array, -1, -2) if array.ndim >= 2 else array
            elif name == "permute":
                array = np.transpose(array, args)
            else:  # reshape
                array = array.reshape(args)
        return np.ascontiguousarray(array)

    def apply_shape(self, shape: tuple[int, ...]) -> tuple[int, ...] | None:
        """The shape after the transform, or None when it does not apply to ``shape``."""
        for name, args in self.ops:
            if name == "transpose":
                if len(shape) >= 2:
                    shape = (*shape[:-2], shape[-1], shape[-2])
            elif name == "permute":
                if sorted(args) != list(range(len(shape))):
                    return None
                shape = tuple(shape[i] for i in args)
            else:
                if int(np.prod(args)) != int(np.prod(shape)):
                    return None
                shape = args
        return shape

    def describe(self) -> str:
        return " then ".join(name if not args else f"{name}{list(args)}" for name, args in self.ops)


TRANSPOSE: Final = Transform((("transpose", ()),))


def _parse_transform(spec: object, where: str) -> Transform:
    items = spec if isinstance(spec, list) else [spec]
    ops: list[tuple[str, tuple[int, ...]]] = []
    for item in items:
        if item == "transpose":
            ops.append(("transpose", ()))
        elif isinstance(item, dict) and len(item) == 1 and next(iter(item)) in ("permute", "reshape"):
            name, args = next(iter(item.items()))
            if not isinstance(args, list) or not all(isinstance(a, int) for a in args):
                raise InputFileError(f"{where}: {name} takes a list of integers, found {args!r}")
            ops.append((name, tuple(args)))
        else:
            raise InputFileError(
                f"{where}: unknown transform {item!r}; use 'transpose', {{permute: [...]}} or {{reshape: [...]}}"
            )
    return Transform(tuple(ops))


def transform_for(transforms: dict[str, Transform], record: Record) -> Transform | None:
    """The transform a mapping declares for ``record``: keyed by ``role:slot``, or by a parameter
    name, which covers the parameter, its gradient and its optimizer state (``<name>.<key>``)."""
    explicit = transforms.get(f"{record.role}:{record.slot}")
    if explicit is not None:
        return explicit
    if record.role in PARAMETER_ROLES:
        return transforms.get(record.slot)
    if record.role == "optimizer_state":
        return transforms.get(record.slot.split(".", 1)[0])
    return None


# --------------------------------------------------------------------------- layer map
@dataclass(frozen=True, slots=True)
class _Pattern:
    text: str
    regex: re.Pattern[str]
    is_regex: bool


def _compile(pattern: str) -> _Pattern:
    if pattern.startswith("re:"):
        return _Pattern(pattern, re.compile(pattern[3:]), True)
    parts = re.split(r"(\*\*|\*|\?)", pattern)
    wildcard = {"**": "(.*)", "*": "([^.]*)", "?": "([^.])"}
    return _Pattern(pattern, re.compile("".join(wildcard.get(p, re.escape(p)) for p in parts)), False)


@dataclass(frozen=True, slots=True)
class _Rule:
    a: _Pattern
    b: str
    transforms: dict[str, Transform]

    def target(self, route: str) -> str | None:
        found = self.a.regex.fullmatch(route)
        if found is None:
            return None
        if self.a.is_regex:
            return found.expand(self.b)
        captures = iter(found.groups())
        return re.sub(r"\*\*|\*|\?", lambda _: next(captures, ""), self.b)


@dataclass(frozen=True, slots=True)
class _Prefixes:
    strip: str = ""
    replace: tuple[tuple[str, str], ...] = ()

    def apply(self, route: str) -> str:
        if self.strip and (route == self.strip.rstrip(".") or route.startswith(self.strip)):
            route = route[len(self.strip):] if route.startswith(self.strip) else ""
        for old, new in self.replace:
            if route.startswith(old):
                route = new + route[len(old):]
                break
        return route


@dataclass(frozen=True, slots=True)
class LayerMap:
    """A parsed layer map (see ``docs/diff.md``, "Layer maps"). The empty map changes nothing."""

    prefixes_a: _Prefixes = _Prefixes()
    prefixes_b: _Prefixes = _Prefixes()
    rules: tuple[_Rule, ...] = ()
    ignore_a: tuple[_Pattern, ...] = ()
    ignore_b: tuple[_Pattern, ...] = ()
    source: str | None = None

    def to_json(self) -> dict[str, Any] | None:
        if self.source is None and not self.rules and not self.ignore_a and not self.ignore_b:
            return None
        return {"source": self.source, "rules": len(self.rules)}


_MAP_KEYS: Final = {"version", "a", "b", "map", "ignore"}


def _expect(value: object, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise InputFileError(f"{where}: expected {names}, found {type(value).__name__} {value!r}")
    return value


def _parse_prefixes(doc: object, where: str) -> _Prefixes:
    if doc is None:
        return _Prefixes()
    doc = _expect(doc, dict, where)
    unknown = set(doc) - {"strip_prefix", "replace_prefix"}
    if unknown:
        raise InputFileError(f"{where}: unknown keys {sorted(unknown)}; use strip_prefix, replace_prefix")
    strip = _expect(doc.get("strip_prefix", ""), str, f"{where}.strip_prefix")
    replace = _expect(doc.get("replace_prefix", {}), dict, f"{where}.replace_prefix")
    pairs = tuple((_expect(k, str, where), _expect(v, str, where)) for k, v in replace.items())
    return _Prefixes(strip, pairs)


def parse_layer_map(doc: object, source: str = "<layer map>") -> LayerMap:
    """Validate a layer-map document (the parsed YAML/JSON) and compile it."""
    doc = _expect(doc, dict, source)
    unknown = set(doc) - _MAP_KEYS
    if unknown:
        raise InputFileError(f"{source}: unknown keys {sorted(unknown)}; a layer map has {sorted(_MAP_KEYS)}")
    version = doc.get("version", 1)
    if version != 1:
        raise InputFileError(f"{source}: layer map version {version!r}; this tracespec reads version 1")
    rules = []
    for i, entry in enumerate(_expect(doc.get("map", []), list, f"{source}: map")):
        where = f"{source}: map[{i}]"
        entry = _expect(entry, dict, where)
        if set(entry) - {"a", "b", "transforms"} or "a" not in entry or "b" not in entry:
            raise InputFileError(f"{where}: an entry has 'a', 'b' and optionally 'transforms', found {sorted(entry)}")
        transforms = {
            _expect(slot, str, where): _parse_transform(spec, f"{where}.transforms.{slot}")
            for slot, spec in _expect(entry.get("transforms", {}), dict, f"{where}.transforms").items()
        }
        try:
            pattern = _compile(_expect(entry["a"], str, f"{where}.a"))
        except re.error as exc:
            raise InputFileError(f"{where}.a: invalid regular expression ({exc})") from None
        rules.append(_Rule(pattern, _expect(entry["b"], str, f"{where}.b"), transforms))
    ignore = _expect(doc.get("ignore", {}), dict, f"{source}: ignore")
    ignored = {
        side: tuple(_compile(_expect(p, str, f"{source}: ignore.{side}")) for p in _expect(ignore.get(side, []), list, f"{source}: ignore.{side}"))
        for side in ("a", "b")
    }
    return LayerMap(
        _parse_prefixes(doc.get("a"), f"{source}: a"),
        _parse_prefixes(doc.get("b"), f"{source}: b"),
        tuple(rules),
        ignored["a"],
        ignored["b"],
        source,
    )


def load_layer_map(path: str | Path) -> LayerMap:
    """Read a layer map from a ``.yaml``/``.yml`` or ``.json`` file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputFileError(f"{path}: cannot read the layer map ({exc})") from None
    if path.suffix in (".yaml", ".yml"):
        import yaml  # only needed for YAML maps

        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise InputFileError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    else:
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputFileError(f"{path}: not valid JSON ({exc}); use .yaml/.yml for YAML") from None
    return parse_layer_map(doc, str(path))


# --------------------------------------------------------------------------- sequence diff
@dataclass(frozen=True, slots=True)
class EditOp:
    """One operation of a sequence diff: ``keep``/``modify`` pair ``a`` with ``b``; ``delete`` has
    only ``a``, ``insert`` only ``b``."""

    op: str
    a: int | None
    b: int | None


MAX_EDITS: Final = 2000
"""Beyond this many insertions and deletions the two sequences are unrelated (an exported op
graph against a module tree): the diff gives up on keeps, and :func:`_pair_block` pairs what it
can. Bounds time at O((n + m) * MAX_EDITS) and memory at O(MAX_EDITS ** 2)."""

PAIRING_CELLS: Final = 1_000_000
"""Largest deletions x insertions block paired optimally; larger blocks are paired greedily."""


def _myers(n: int, m: int, equal: Callable[[int, int], bool]) -> list[EditOp]:
    """Myers' O(ND) shortest edit script between two sequences of lengths n and m."""
    offset = n + m + 1
    v = [0] * (2 * offset + 1)
    history: list[list[int]] = []  # history[d]: the part of v for diagonals -d-1 .. d+1
    final_d = None
    for d in range(min(n + m, MAX_EDITS) + 1):
        history.append(v[offset - d - 1 : offset + d + 2])
        done = False
        for k in range(-d, d + 1, 2):
            if k == -d or (k != d and v[offset + k - 1] < v[offset + k + 1]):
                x = v[offset + k + 1]
            else:
                x = v[offset + k - 1] + 1
            y = x - k
            while x < n and y < m and equal(x, y):
                x, y = x + 1, y + 1
            v[offset + k] = x
            if x >= n and y >= m:
                done = True
                break
        if done:
            final_d = d
            break
    if final_d is None:
        return [EditOp("delete", i, None) for i in range(n)] + [EditOp("insert", None, j) for j in range(m)]
    ops: list[EditOp] = []
    x, y = n, m
    for d in range(final_d, 0, -1):
        before = history[d]
        k = x - y
        if k == -d or (k != d and before[k - 1 + d + 1] < before[k + 1 + d + 1]):
            prev_k = k + 1
        else:
            prev_k = k - 1
        prev_x = before[prev_k + d + 1]
        prev_y = prev_x - prev_k
        while x > prev_x and y > prev_y:
            x, y = x - 1, y - 1
            ops.append(EditOp("keep", x, y))
        if x == prev_x:
            ops.append(EditOp("insert", None, prev_y))
        else:
            ops.append(EditOp("delete", prev_x, None))
        x, y = prev_x, prev_y
    while x > 0 and y > 0:
        x, y = x - 1, y - 1
        ops.append(EditOp("keep", x, y))
    ops.reverse()
    return ops


def _pair_block(deleted: list[int], inserted: list[int], similarity: Callable[[int, int], float]) -> list[EditOp]:
    """Pair deletions with insertions in order, maximising total similarity (> 0 only)."""
    rows, cols = len(deleted), len(inserted)
    if rows * cols > PAIRING_CELLS:
        return _pair_greedily(deleted, inserted, similarity)
    best = [[0.0] * (cols + 1) for _ in range(rows + 1)]
    for i in range(rows - 1, -1, -1):
        for j in range(cols - 1, -1, -1):
            score = similarity(deleted[i], inserted[j])
            paired = best[i + 1][j + 1] + score if score > 0 else -1.0
            best[i][j] = max(paired, best[i + 1][j], best[i][j + 1])
    ops: list[EditOp] = []
    i = j = 0
    while i < rows and j < cols:
        score = similarity(deleted[i], inserted[j])
        if score > 0 and best[i][j] == best[i + 1][j + 1] + score:
            ops.append(EditOp("modify", deleted[i], inserted[j]))
            i, j = i + 1, j + 1
        elif best[i][j] == best[i + 1][j]:
            ops.append(EditOp("delete", deleted[i], None))
            i += 1
        else:
            ops.append(EditOp("insert", None, inserted[j]))
            j += 1
    ops.extend(EditOp("delete", a, None) for a in deleted[i:])
    ops.extend(EditOp("insert", None, b) for b in inserted[j:])
    return ops


def _pair_greedily(deleted: list[int], inserted: list[int], similarity: Callable[[int, int], float]) -> list[EditOp]:
    """Pair in order, each deletion with the next insertion it is similar to (within a window)."""
    ops: list[EditOp] = []
    j = 0
    for a in deleted:
        found = next((k for k in range(j, min(j + 64, len(inserted))) if similarity(a, inserted[k]) > 0), None)
        if found is None:
            ops.append(EditOp("delete", a, None))
            continue
        ops.extend(EditOp("insert", None, b) for b in inserted[j:found])
        ops.append(EditOp("modify", a, inserted[found]))
        j = found + 1
    ops.extend(EditOp("insert", None, b) for b in inserted[j:])
    return ops


def diff_sequences(
    n: int, m: int, equal: Callable[[int, int], bool], similarity: Callable[[int, int], float]
) -> list[EditOp]:
    """Myers diff with a "modify" operation.

    ``equal(i, j)`` decides "keep"; each run of deletions and insertions between two keeps is then
    paired in order where ``similarity(i, j) > 0`` ("modify"), maximising the total similarity.
    """
    result: list[EditOp] = []
    deleted: list[int] = []
    inserted: list[int] = []
    for op in [*_myers(n, m, equal), EditOp("keep", None, None)]:
        if op.op == "delete":
            deleted.append(op.a)  # type: ignore[arg-type]
        elif op.op == "insert":
            inserted.append(op.b)  # type: ignore[arg-type]
        else:
            result.extend(_pair_block(deleted, inserted, similarity))
            deleted, inserted = [], []
            if op.a is not None:
                result.append(op)
    return result


# --------------------------------------------------------------------------- tree alignment
@dataclass(frozen=True, slots=True)
class Match:
    """Node ``a`` of A and node ``b`` of B compute the same thing."""

    a: int
    b: int
    method: str  # "layer_map", "exact", "structural"
    transforms: dict[str, Transform] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Unmatched:
    """A node left without a counterpart, and why."""

    side: str
    node: int
    route: str
    class_name: str
    reason: str


@dataclass(frozen=True, slots=True)
class Alignment:
    """The result of :func:`align_trees`: matches in A's pre-order, and the unmatched nodes."""

    matches: tuple[Match, ...]
    unmatched: tuple[Unmatched, ...]
    nodes_a: int
    nodes_b: int

    def method_counts(self) -> dict[str, int]:
        counts = {"layer_map": 0, "exact": 0, "structural": 0}
        for match in self.matches:
            counts[match.method] += 1
        return counts


def _layout_transforms(view_a: RankView, view_b: RankView, a: int, b: int) -> dict[str, Transform]:
    found = {}
    for (framework, class_name, slot), layout in LAYOUT_RULES.items():
        if framework != view_a.framework or class_name != view_a.nodes[a].class_name:
            continue
        other = LAYOUT_RULES.get((view_b.framework, view_b.nodes[b].class_name, slot))
        if other is not None and other != layout:
            found[slot] = TRANSPOSE
    return found


class _Aligner:
    def __init__(self, view_a: RankView, view_b: RankView, layer_map: LayerMap) -> None:
        self.va, self.vb, self.map = view_a, view_b, layer_map
        self.norm_a = {n: layer_map.prefixes_a.apply(view_a.nodes[n].route) for n in view_a.nodes}
        self.norm_b = {n: layer_map.prefixes_b.apply(view_b.nodes[n].route) for n in view_b.nodes}
        self.b_by_norm: dict[str, int] = {}
        for n in sorted(view_b.nodes):
            self.b_by_norm.setdefault(self.norm_b[n], n)
        self.matches: dict[int, Match] = {}
        self.claimed_b: dict[int, int] = {}
        self.reasons: dict[tuple[str, int], str] = {}
        self.ignored = {
            ("a", n) for n in view_a.nodes if any(p.regex.fullmatch(self.norm_a[n]) for p in layer_map.ignore_a)
        } | {("b", n) for n in view_b.nodes if any(p.regex.fullmatch(self.norm_b[n]) for p in layer_map.ignore_b)}
        self._signatures: dict[tuple[str, int, tuple[str, ...]], tuple[Any, ...]] = {}

    def _claim(self, a: int, b: int, method: str, transforms: dict[str, Transform] | None = None) -> None:
        merged = {**_layout_transforms(self.va, self.vb, a, b), **(transforms or {})}
        self.matches[a] = Match(a, b, method, merged)
        self.claimed_b[b] = a

    def _free(self, side: str, node: int) -> bool:
        if (side, node) in self.ignored:
            return False
        return node not in (self.matches if side == "a" else self.claimed_b)

    def by_layer_map(self) -> None:
        for a in sorted(self.va.nodes):
            if not self._free("a", a):
                continue
            for rule in self.map.rules:
                target = rule.target(self.norm_a[a])
                if target is None:
                    continue
                b = self.b_by_norm.get(target)
                if b is None:
                    self.reasons[("a", a)] = f"the layer map maps it to {target!r}, which is not a route of B"
                elif not self._free("b", b):
                    self.reasons[("a", a)] = f"the layer map maps it to {target!r}, already matched or ignored"
                else:
                    self._claim(a, b, "layer_map", rule.transforms)
                break

    def _class(self, side: str, node: int) -> str:
        view = self.va if side == "a" else self.vb
        name = view.nodes[node].class_name
        return CLASS_ALIASES.get((view.framework, name), name)

    def _unwrap_for(self, side: str, wrapper: int, class_name: str) -> int | None:
        """The only child of ``wrapper`` if it has that class (``wrapper`` then wraps it)."""
        view = self.va if side == "a" else self.vb
        kids = view.children.get(wrapper, [])
        if len(kids) == 1 and self._class(side, kids[0]) == class_name and self._free(side, kids[0]):
            self.reasons[(side, wrapper)] = (
                f"a wrapper: its only child {view.nodes[kids[0]].route!r} was aligned in its place"
            )
            self.ignored.add((side, wrapper))
            return kids[0]
        return None

    def by_exact_route(self) -> None:
        for a in sorted(self.va.nodes):
            if not self._free("a", a) or ("a", a) in self.reasons:
                continue
            b = self.b_by_norm.get(self.norm_a[a])
            if b is None or not self._free("b", b):
                continue
            if self._class("a", a) != self._class("b", b):
                # the same route, but one side is an extra wrapper around the other's layer
                inner_b = self._unwrap_for("b", b, self._class("a", a))
                inner_a = None if inner_b is not None else self._unwrap_for("a", a, self._class("b", b))
                a, b = (inner_a if inner_a is not None else a), (inner_b if inner_b is not None else b)
            self._claim(a, b, "exact")

    # -- structural
    def _signature(self, side: str, node: int, partner_transforms: dict[str, Transform]) -> tuple[Any, ...]:
        view = self.va if side == "a" else self.vb
        outputs = []
        params = []
        for record in view.node_records(node):
            if record.shape is None:
                continue
            if record.stage == "forward" and record.role == "output" and record.call == 0:
                outputs.append((record.slot, record.shape))
            elif record.stage == "forward" and record.role == "parameter":
                shape: tuple[int, ...] | None = record.shape
                transform = partner_transforms.get(record.slot)
                if transform is not None:
                    shape = transform.apply_shape(record.shape)
                params.append((record.slot, shape))
        return (self._class(side, node), view.forward_call_count(node), tuple(sorted(outputs)),
                tuple(sorted(params, key=str)), self._leaf_profile(side, node))

    def _leaf_profile(self, side: str, node: int) -> tuple[Any, ...]:
        """The building blocks under ``node``: each leaf module's class and parameter sizes.

        A port often renames its own classes (``Block`` -> ``Layer``) while the leaves stay the
        frameworks' built-ins (Linear, LayerNorm, GELU), so equal leaves are evidence that two
        differently named containers compute the same thing. Sizes, not shapes: layouts differ.
        """
        view = self.va if side == "a" else self.vb
        leaves = []
        stack = list(view.children.get(node, []))
        while stack:
            current = stack.pop()
            kids = view.children.get(current, [])
            if kids:
                stack.extend(kids)
                continue
            sizes = sorted(
                math.prod(r.shape) for r in view.node_records(current)
                if r.stage == "forward" and r.role == "parameter" and r.shape is not None
            )
            leaves.append((self._class(side, current), tuple(sizes)))
        return tuple(sorted(leaves))

    def _sig(self, side: str, node: int, other: int | None = None) -> tuple[Any, ...]:
        """The signature of ``node``; for B, with the layout rules that apply opposite A's ``other``."""
        transforms = _layout_transforms(self.va, self.vb, other, node) if side == "b" and other is not None else {}
        key = (side, node, tuple(sorted(transforms)))
        if key not in self._signatures:
            self._signatures[key] = self._signature(side, node, transforms)
        return self._signatures[key]

    def _similarity(self, a: int, b: int) -> float:
        sa, sb = self._sig("a", a), self._sig("b", b, a)
        score = 0.0
        if sa[0] == sb[0]:
            score += 2
        if sa[2] == sb[2] and sa[2]:
            score += 1
        if sa[3] == sb[3] and sa[3]:
            score += 1
        if sa[1] == sb[1]:
            score += 0.5
        if sa[4] == sb[4] and sa[4]:
            score += 1
        return score if score >= 2 else 0.0

    def _ordered_children(self, side: str, parent: int | None) -> list[int]:
        view = self.va if side == "a" else self.vb
        kids = [k for k in view.children.get(parent, []) if self._free(side, k)]
        never = 1 << 62
        return sorted(kids, key=lambda k: (view.first_call_begin(k) if view.first_call_begin(k) is not None else never, view.nodes[k].position, k))

    def align_children(self, parent_a: int | None, parent_b: int | None) -> list[tuple[int, int]]:
        seq_a = self._ordered_children("a", parent_a)
        seq_b = self._ordered_children("b", parent_b)
        if not seq_a or not seq_b:
            for side, seq, other_parent in (("a", seq_a, parent_b), ("b", seq_b, parent_a)):
                for node in seq:
                    self._note_deleted(side, node, other_parent, [])
            return []
        for _ in range(len(seq_a) + len(seq_b) + 8):
            ops = diff_sequences(
                len(seq_a), len(seq_b),
                lambda i, j: self._sig("a", seq_a[i]) == self._sig("b", seq_b[j], seq_a[i]),
                lambda i, j: self._similarity(seq_a[i], seq_b[j]),
            )
            if not self._unwrap_one(ops, seq_a, seq_b):
                break
        paired = []
        for op in ops:
            if op.a is not None and op.b is not None:
                a, b = seq_a[op.a], seq_b[op.b]
                self._claim(a, b, "structural")
                paired.append((a, b))
            elif op.a is not None:
                self._note_deleted("a", seq_a[op.a], parent_b, seq_b)
            elif op.b is not None:
                self._note_deleted("b", seq_b[op.b], parent_a, seq_a)
        return paired

    def _unwrap_one(self, ops: list[EditOp], seq_a: list[int], seq_b: list[int]) -> bool:
        """Replace one unpaired single-child node by its child (an extra wrapper); True if done."""
        for op in ops:
            side, index = ("a", op.a) if op.b is None else ("b", op.b) if op.a is None else (None, None)
            if side is None or index is None:
                continue
            view = self.va if side == "a" else self.vb
            seq = seq_a if side == "a" else seq_b
            wrapper = seq[index]
            kids = [k for k in view.children.get(wrapper, []) if self._free(side, k)]
            if len(kids) == 1:
                seq[index] = kids[0]
                self.reasons[(side, wrapper)] = (
                    f"a wrapper: its only child {view.nodes[kids[0]].route!r} was aligned in its place"
                )
                self.ignored.add((side, wrapper))
                return True
        return False

    def _note_deleted(self, side: str, node: int, other_parent: int | None, other_left: list[int]) -> None:
        view, other = (self.va, self.vb) if side == "a" else (self.vb, self.va)
        other_side = "b" if side == "a" else "a"
        left = list(itertools.islice((other.nodes[n].route for n in other_left if self._free(other_side, n)), 5))
        where = "the top level" if other_parent is None else repr(other.nodes[other_parent].route)
        self.reasons.setdefault(
            (side, node),
            f"structural alignment found no counterpart ({view.nodes[node].class_name}) among the children "
            f"of {where} in the other trace" + (f"; left there: {left}" if left else "; none left there"),
        )

    def structural(self) -> None:
        queue: list[tuple[int | None, int | None]] = [(None, None)]
        queue += [(m.a, m.b) for m in sorted(self.matches.values(), key=lambda m: m.a)]
        done: set[tuple[int | None, int | None]] = set()
        while queue:
            pair = queue.pop(0)
            if pair in done:
                continue
            done.add(pair)
            queue.extend(self.align_children(*pair))
            # children matched by layer map or exact route also have children to align
            if pair[0] is not None:
                for kid in self.va.children.get(pair[0], []):
                    if kid in self.matches:
                        queue.append((kid, self.matches[kid].b))

    def unmatched(self) -> list[Unmatched]:
        found = []
        for side, view, free in (("a", self.va, lambda n: n not in self.matches), ("b", self.vb, lambda n: n not in self.claimed_b)):
            for node_id in sorted(view.nodes):
                if not free(node_id):
                    continue
                node = view.nodes[node_id]
                reason = self.reasons.get((side, node_id))
                if reason is None and (side, node_id) in self.ignored:
                    reason = "ignored by the layer map"
                if reason is None:
                    parent = node.parent
                    if parent is not None and free(parent):
                        reason = f"its parent {view.nodes[parent].route!r} is unmatched"
                    else:
                        reason = "no counterpart found by the layer map, exact route or structural alignment"
                found.append(Unmatched(side, node_id, node.route, node.class_name, reason))
        return found


def align_trees(view_a: RankView, view_b: RankView, layer_map: LayerMap | None = None) -> Alignment:
    """Align the module trees of ``view_a`` and ``view_b`` (see the module docstring)."""
    aligner = _Aligner(view_a, view_b, layer_map or LayerMap())
    aligner.by_layer_map()
    aligner.by_exact_route()
    aligner.structural()
    matches = tuple(sorted(aligner.matches.values(), key=lambda m: m.a))
    return Alignment(matches, tuple(aligner.unmatched()), len(view_a.nodes), len(view_b.nodes))


def pair_records(a: Sequence[Record], b: Sequence[Record]) -> tuple[list[tuple[Record, Record]], list[Record], list[Record]]:
    """Pair the records of two matched nodes by (role, call, slot); return pairs and leftovers."""
    by_key = {r.key: r for r in b}
    pairs, only_a = [], []
    for record in a:
        other = by_key.pop(record.key, None)
        if other is None:
            only_a.append(record)
        else:
            pairs.append((record, other))
    return pairs, only_a, list(by_key.values())
