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

import bisect
import collections
import itertools
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from tracespec.compare.dataflow import align_call_sequences, describe_call, value_distance
from tracespec.compare.families import op_family
from tracespec.compare.layer_map import (
    TRANSPOSE,
    CallName,
    LayerMap,
    Transform,
    layer_map_document,
    load_layer_map,
    parse_layer_map,
)
from tracespec.compare.sequence import EditOp, diff_sequences
from tracespec.compare.view import Call, RankView, Record
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
"""Native layouts of parameters that differ between frameworks. A node's ``attrs.parameter_layout``
(written by an adapter that knows better, e.g. ONNX Runtime's for an exporter's transposed weight)
overrides the rule for that node. Where A's and B's layouts of a matched pair differ, B's tensor is
transposed (last two axes) before comparing."""

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

# --------------------------------------------------------------------------- tree alignment
@dataclass(frozen=True, slots=True)
class Match:
    """Node ``a`` of A and node ``b`` of B compute the same thing."""

    a: int
    b: int
    method: str  # "layer_map", "exact", "structural", "dataflow", "fused"
    transforms: dict[str, Transform] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Unmatched:
    """A node left without a counterpart, and why."""

    side: str
    node: int
    route: str
    class_name: str
    reason: str


CallRef = tuple[int, int]
"""A call: (node id, call index) in a (step, stage)."""


@dataclass(frozen=True, slots=True)
class CallMatch:
    """Calls ``a`` of A compute what calls ``b`` of B compute (each one call, or consecutive calls in
    execution order: a fused group, or a span under a container). They are compared at the
    boundary: the first members' inputs, the last members' outputs; their parameters only where
    ``params``: the first members are the same layer, and the others only pass values through (a
    Dropout in eval mode), which also names the match by its first members instead of its last."""

    a: tuple[CallRef, ...]
    b: tuple[CallRef, ...]
    method: str  # layer_map, exact, structural, dataflow, fused
    transforms: dict[str, Transform] = field(default_factory=dict)
    params: bool = True
    backward: bool = True
    """False for a span of calls standing for a container: the gradient of the span's input sums
    every consumer's share (a residual branch too), so only the forward boundary is comparable."""


@dataclass(frozen=True, slots=True)
class UnmatchedCall:
    """A leaf call left without a counterpart, and why."""

    side: str
    node: int
    call: int
    route: str
    class_name: str
    reason: str


STRUCTURAL_CELLS: Final = 40_000
"""Children of A x children of B beyond which structural alignment runs only on lists that are
alike, and pairs the runs a diff leaves over greedily (bounded time for flat graphs of 10k ops)."""

CALL_METHODS: Final = ("layer_map", "exact", "structural", "dataflow", "fused")

LOW_COVERAGE: Final = 0.9
"""Below this share of A's leaf calls compared, the report warns that a PASS covers only part of the model."""


@dataclass(frozen=True, slots=True)
class Alignment:
    """The result of :func:`align_trees`: node matches in A's pre-order (for the records outside
    calls: parameters, gradients, optimizer state), call matches (for everything inside calls), and
    what stayed unmatched, with the leaf-call coverage of each side."""

    matches: tuple[Match, ...]
    unmatched: tuple[Unmatched, ...]
    nodes_a: int
    nodes_b: int
    calls: tuple[CallMatch, ...] = ()
    unmatched_calls: tuple[UnmatchedCall, ...] = ()
    leaf_calls: dict[str, int] = field(default_factory=lambda: {"a": 0, "b": 0})
    compared_calls: dict[str, int] = field(default_factory=lambda: {"a": 0, "b": 0})
    calls_by_method: dict[str, int] = field(default_factory=dict)

    def method_counts(self) -> dict[str, int]:
        counts = dict.fromkeys(CALL_METHODS, 0)
        for match in self.matches:
            counts[match.method] += 1
        return counts

    def call_coverage(self) -> dict[str, Any]:
        """The share of each side's leaf calls (first step, forward) that is compared, by method."""
        return {
            "leaf_a": self.leaf_calls["a"], "leaf_b": self.leaf_calls["b"],
            "compared_a": self.compared_calls["a"], "compared_b": self.compared_calls["b"],
            "fraction_a": self.compared_calls["a"] / self.leaf_calls["a"] if self.leaf_calls["a"] else 1.0,
            "fraction_b": self.compared_calls["b"] / self.leaf_calls["b"] if self.leaf_calls["b"] else 1.0,
            "by_method": {m: self.calls_by_method.get(m, 0) for m in CALL_METHODS},
        }


def _layouts(view: RankView, node: int) -> dict[str, str]:
    """How ``node`` lays out its parameters, by slot: the framework's rules for its class, overridden
    by the layout its adapter recorded for this node (``attrs.parameter_layout``)."""
    found = dict(_RULES_BY_CLASS.get((view.framework, view.nodes[node].class_name), {}))
    found.update(view.nodes[node].layouts)
    return found


_RULES_BY_CLASS: Final[dict[tuple[str, str], dict[str, str]]] = {}
for (_framework, _class_name, _slot), _layout in LAYOUT_RULES.items():
    _RULES_BY_CLASS.setdefault((_framework, _class_name), {})[_slot] = _layout


def _layout_transforms(view_a: RankView, view_b: RankView, a: int, b: int) -> dict[str, Transform]:
    """Transforms that bring B's parameters into A's layout where both layouts are known and differ."""
    layouts_a, layouts_b = _layouts(view_a, a), _layouts(view_b, b)
    return {slot: TRANSPOSE for slot, layout in sorted(layouts_a.items())
            if layouts_b.get(slot, layout) != layout}


class _Aligner:
    def __init__(self, view_a: RankView, view_b: RankView, layer_map: LayerMap) -> None:
        self.va, self.vb, self.map = view_a, view_b, layer_map
        self.norm_a = {n: layer_map.prefixes_a.apply(view_a.nodes[n].route) for n in view_a.nodes}
        self.norm_b = {n: layer_map.prefixes_b.apply(view_b.nodes[n].route) for n in view_b.nodes}
        self.b_by_norm = self.route_index("b")
        self.matches: dict[int, Match] = {}
        self.claimed_b: dict[int, int] = {}
        self.reasons: dict[tuple[str, int], str] = {}
        self.ignored = {
            ("a", n) for n in view_a.nodes if any(p.regex.fullmatch(self.norm_a[n]) for p in layer_map.ignore_a)
        } | {("b", n) for n in view_b.nodes if any(p.regex.fullmatch(self.norm_b[n]) for p in layer_map.ignore_b)}
        self.ignored_by_map = frozenset(self.ignored)
        """What the layer map's ``ignore`` names (``ignored`` grows with the wrappers looked through)."""
        self._signatures: dict[tuple[str, int], tuple[Any, ...]] = {}
        self.accounted: set[tuple[str, int]] = set()

    def route_index(self, side: str) -> dict[str, int]:
        """Node ids by route after the layer map's prefix rules (the first node of a route wins)."""
        routes = self.norm_a if side == "a" else self.norm_b
        found: dict[str, int] = {}
        for node in sorted(routes):
            found.setdefault(routes[node], node)
        return found

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
    def _signature(self, side: str, node: int) -> tuple[Any, ...]:
        """Class, call count, output shapes and parameter sizes (sizes, not shapes: layouts differ
        across frameworks), and the leaf profile."""
        view = self.va if side == "a" else self.vb
        outputs = []
        params = []
        for record in view.node_records(node):
            if record.shape is None:
                continue
            if record.stage == "forward" and record.role == "output" and record.call == 0:
                outputs.append((record.slot, record.shape))
            elif record.stage == "forward" and record.role == "parameter":
                params.append((record.slot, math.prod(record.shape)))
        return (self._class(side, node), view.forward_call_count(node), tuple(sorted(outputs)),
                tuple(sorted(params)), self._leaf_profile(side, node))

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

    def _sig(self, side: str, node: int) -> tuple[Any, ...]:
        key = (side, node)
        if key not in self._signatures:
            self._signatures[key] = self._signature(side, node)
        return self._signatures[key]

    def _similarity(self, a: int, b: int) -> float:
        sa, sb = self._sig("a", a), self._sig("b", b)
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

    def _alike(self, seq_a: list[int], seq_b: list[int]) -> bool:
        """Do at least half of the shorter list's children have a child of equal signature opposite?"""
        opposite = collections.Counter(self._sig("b", node) for node in seq_b)
        shared = 0
        for node in seq_a:
            signature = self._sig("a", node)
            if opposite[signature] > 0:
                opposite[signature] -= 1
                shared += 1
        return 2 * shared >= min(len(seq_a), len(seq_b))

    def align_children(self, parent_a: int | None, parent_b: int | None) -> list[tuple[int, int]]:
        seq_a = self._ordered_children("a", parent_a)
        seq_b = self._ordered_children("b", parent_b)
        if not seq_a or not seq_b:
            for side, seq, other_parent in (("a", seq_a, parent_b), ("b", seq_b, parent_a)):
                for node in seq:
                    self._note_deleted(side, node, other_parent, [])
            return []
        if len(seq_a) * len(seq_b) > STRUCTURAL_CELLS and not self._alike(seq_a, seq_b):
            # two long, unrelated child lists (a flat conversion under a module tree): the call
            # alignment by dataflow pairs them in linear time; a diff here would take quadratic time
            for side, seq, other_parent, other_seq in (("a", seq_a, parent_b, seq_b), ("b", seq_b, parent_a, seq_a)):
                for node in seq:
                    self._note_deleted(side, node, other_parent, other_seq)
            return []
        for _ in range(len(seq_a) + len(seq_b) + 8):
            ops = diff_sequences(
                len(seq_a), len(seq_b),
                lambda i, j: self._sig("a", seq_a[i]) == self._sig("b", seq_b[j]),
                lambda i, j: self._similarity(seq_a[i], seq_b[j]),
                max_cells=STRUCTURAL_CELLS,
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

    def adopt_call_matches(self, calls: list[CallMatch], leaf: dict[str, set[CallRef]],
                           accounted: set[tuple[str, int]]) -> None:
        """Make the node matches agree with the call alignment: a structural guess about a leaf
        yields to what the calls compute, and one-to-one call matches pair their nodes' parameters.
        Nodes in ``accounted`` (aligned or reported call by call) are not reported as nodes."""
        leaf_nodes_a = {node for node, _ in leaf["a"]}
        for a, match in list(self.matches.items()):
            if match.method == "structural" and a in leaf_nodes_a:
                del self.claimed_b[match.b]
                del self.matches[a]
        for match in calls:
            a, b = match.a[0][0], match.b[0][0]
            if match.params and a not in self.matches and b not in self.claimed_b:
                self._claim(a, b, match.method)
        self.accounted = accounted

    def unmatched(self) -> list[Unmatched]:
        """Nodes without a counterpart, except those aligned call by call and those that hold
        nothing to compare (no call, no record: a container that never ran itself)."""
        found = []
        for side, view, free in (("a", self.va, lambda n: n not in self.matches), ("b", self.vb, lambda n: n not in self.claimed_b)):
            active = {node for _, _, node in view.records} | {c.node for calls in view.calls.values() for c in calls}
            for node_id in sorted(view.nodes):
                if not free(node_id) or (side, node_id) in self.accounted or node_id not in active:
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


class _CallPhase:
    """Aligns the calls of one step's forward pass, after the node pipeline (see the module docstring).

    Leaf calls, the ones with no call nested inside, are what a model computes; a leaf on one side
    matched by layer map or route to a call that has nested calls on the other (a PyTorch ``Conv2d``
    against the ONNX module holding its ``Conv`` op) stands for those nested calls, which count as
    compared through it. The leaf calls left over are aligned by :mod:`tracespec.compare.dataflow`.
    """

    def __init__(self, aligner: _Aligner) -> None:
        self.aligner = aligner
        self.va, self.vb = aligner.va, aligner.vb
        self.calls = {"a": self._forward_calls(self.va), "b": self._forward_calls(self.vb)}
        self.parent = {side: _call_parents(calls, view) for side, calls, view in
                       (("a", self.calls["a"], self.va), ("b", self.calls["b"], self.vb))}
        self.leaf = {side: set(calls) - {p for p in self.parent[side].values() if p is not None}
                     for side, calls in self.calls.items()}
        self.accounted: set[tuple[str, int]] = set()
        """Nodes aligned or reported call by call, which the node-level report leaves out."""
        self.rule_transforms: dict[tuple[CallRef, CallRef], dict[str, Transform]] = {}

    @staticmethod
    def _forward_calls(view: RankView) -> dict[CallRef, Call]:
        if not view.steps:
            return {}
        calls = sorted(view.calls.get((view.steps[0], "forward"), []), key=lambda c: (c.begin, -c.end))
        return {(c.node, c.call): c for c in calls}

    def _node_pairs(self) -> dict[CallRef, tuple[CallRef, str]]:
        """Call pairs of the node matches: the k-th call of a node with the k-th of its partner."""
        by_node: dict[str, dict[int, list[CallRef]]] = {"a": {}, "b": {}}
        for side in ("a", "b"):
            for ref in self.calls[side]:
                by_node[side].setdefault(ref[0], []).append(ref)
        pairs = {}
        for match in self.aligner.matches.values():
            calls_a, calls_b = by_node["a"].get(match.a, []), by_node["b"].get(match.b, [])
            if len(calls_a) != len(calls_b):
                # not call for call: an ONNX module records one call for a PyTorch module called twice
                continue
            for ca, cb in zip(calls_a, calls_b):
                pairs[ca] = (cb, match.method)
        return pairs

    def _covered_by(self, side: str, stands_for: set[CallRef]) -> dict[CallRef, CallRef]:
        """Each call nested inside a call of ``stands_for``, with that call."""
        found = {}
        for ref in self.calls[side]:
            parent = self.parent[side][ref]
            while parent is not None:
                if parent in stands_for:
                    found[ref] = parent
                    break
                parent = self.parent[side][parent]
        return found

    def _transforms(self, a: int, b: int) -> dict[str, Transform]:
        """The node match's transforms (a layer map's, with the layout rules) where ``a`` and ``b`` are
        matched as nodes, else the layout rules alone."""
        match = self.aligner.matches.get(a)
        if match is not None and match.b == b:
            return match.transforms
        return _layout_transforms(self.va, self.vb, a, b)

    def _inner_families(self, side: str, view: RankView, covered: dict[CallRef, CallRef]) -> dict[CallRef, str]:
        """For each call standing for nested leaf calls that all share one family (an ONNX module
        holding one ``Conv`` op computes a convolution), that family."""
        found: dict[CallRef, set[str]] = {}
        for inner, outer in covered.items():
            if inner in self.leaf[side]:
                found.setdefault(outer, set()).add(op_family(view.nodes[inner[0]].class_name))
        return {outer: families.pop() for outer, families in found.items() if len(families) == 1}

    def _resolve(self, side: str, names: tuple[CallName, ...]) -> tuple[CallRef, ...] | None:
        """The calls a layer map's call entry names on one side (routes after its prefix rules)."""
        by_route = self.aligner.route_index(side)
        refs = tuple((by_route.get(route, -1), call) for route, call in names)
        return refs if all(ref in self.calls[side] for ref in refs) else None

    def _call_rules(self) -> tuple[dict[CallRef, tuple[CallRef, str]], list[CallMatch]]:
        """The layer map's call entries: one call with one call (an anchor), or groups (matched as given)."""
        anchors: dict[CallRef, tuple[CallRef, str]] = {}
        groups = []
        for rule in self.aligner.map.call_rules:
            refs_a, refs_b = self._resolve("a", rule.a), self._resolve("b", rule.b)
            if refs_a is None or refs_b is None:
                side, names = ("A", rule.a) if refs_a is None else ("B", rule.b)
                raise InputFileError(
                    f"{self.aligner.map.source}: the entry {[f'{r}#{c}' for r, c in names]} names a call that {side}'s "
                    "first step does not have (routes are exact, after the prefix rules; #k counts from 0)")
            if len(refs_a) == 1 and len(refs_b) == 1:
                anchors[refs_a[0]] = (refs_b[0], "layer_map")
                self.rule_transforms[(refs_a[0], refs_b[0])] = rule.transforms
            else:
                # a container against a span of calls: only the forward boundary compares (see CallMatch)
                spans = any(ref not in self.leaf[side] for side, refs in (("a", refs_a), ("b", refs_b)) for ref in refs)
                groups.append(CallMatch(refs_a, refs_b, "layer_map", rule.transforms, params=False, backward=not spans))
        return anchors, groups

    def run(self) -> tuple[list[CallMatch], list[UnmatchedCall], dict[str, Any]]:
        node_pairs = self._node_pairs()
        call_anchors, given_groups = self._call_rules()
        # a fused group's calls leave the sequences; a span's stay there (a container stands for them)
        fused = [m for m in given_groups if m.backward]
        grouped = {"a": {ref for m in fused for ref in m.a}, "b": {ref for m in fused for ref in m.b}}
        node_pairs = {ca: pair for ca, pair in node_pairs.items() if ca not in call_anchors and ca not in grouped["a"]}
        node_pairs.update(call_anchors)
        trusted = {ca: (cb, method) for ca, (cb, method) in node_pairs.items() if method in ("layer_map", "exact")}
        stands_a = {ca for ca, (cb, _) in trusted.items() if ca in self.leaf["a"] or cb in self.leaf["b"]}
        stands_b = {trusted[ca][0] for ca in stands_a}
        covered = {"a": self._covered_by("a", stands_a), "b": self._covered_by("b", stands_b)}
        ignored = self.aligner.ignored_by_map
        seqs = {
            side: [ref for ref in self.calls[side]
                   if (ref in self.leaf[side] or ref in stands) and ref not in covered[side] and ref not in grouped[side]
                   and (side, ref[0]) not in ignored]
            for side, stands in (("a", stands_a), ("b", stands_b))
        }
        infos = {}
        for side, view in (("a", self.va), ("b", self.vb)):
            inner = self._inner_families(side, view, covered[side])
            infos[side] = [describe_call(view, view.steps[0], ref[0], ref[1], self.calls[side][ref].begin,
                                         self.calls[side][ref].end, inner.get(ref)) for ref in seqs[side]]
        position_b = {ref: j for j, ref in enumerate(seqs["b"])}
        anchors = [(i, position_b[trusted[ref][0]], trusted[ref][1]) for i, ref in enumerate(seqs["a"])
                   if ref in trusted and trusted[ref][0] in position_b]
        structural = {ca: cb for ca, (cb, method) in node_pairs.items() if method == "structural"}
        matches: list[CallMatch] = list(given_groups)
        in_sequence: dict[str, dict[CallRef, str]] = {side: dict.fromkeys(grouped[side], "layer_map") for side in ("a", "b")}
        for pairing in align_call_sequences(infos["a"], infos["b"], anchors):
            refs_a = tuple(seqs["a"][i] for i in pairing.a)
            refs_b = tuple(seqs["b"][j] for j in pairing.b)
            method = pairing.method
            if method == "dataflow" and structural.get(refs_a[0]) == refs_b[0]:
                method = "structural"
            transforms = (self.rule_transforms.get((refs_a[0], refs_b[0])) or self._transforms(refs_a[0][0], refs_b[0][0])
                          if pairing.same_layer else {})
            matches.append(CallMatch(refs_a, refs_b, method, transforms, params=pairing.same_layer))
            for side, refs in (("a", refs_a), ("b", refs_b)):
                for ref in refs:
                    in_sequence[side][ref] = method
        matches += self._containers(seqs, matches, node_pairs, covered)
        unmatched = self._unmatched(seqs, matches, infos)
        coverage = self._coverage(in_sequence, covered)
        self.accounted |= {(side, node) for side in ("a", "b") for node, _ in [*in_sequence[side], *covered[side]]}
        self.accounted |= {(u.side, u.node) for u in unmatched}
        self.accounted |= {("a", m.a[0][0]) for m in matches} | {("b", ref[0]) for m in matches for ref in m.b}
        return matches, unmatched, coverage

    def _spans(self, side: str, seq: list[CallRef]) -> dict[CallRef, tuple[int, int]]:
        """For each call that is not in ``seq``, the first and last positions in ``seq`` of the calls
        nested inside it (calls with none nested are left out)."""
        position = {ref: i for i, ref in enumerate(seq)}
        spans: dict[CallRef, tuple[int, int]] = {}
        for ref, i in position.items():
            parent = self.parent[side][ref]
            while parent is not None:
                if parent not in position:
                    low, high = spans.get(parent, (i, i))
                    spans[parent] = (min(low, i), max(high, i))
                parent = self.parent[side][parent]
        return spans

    def _containers(self, seqs: dict[str, list[CallRef]], matches: list[CallMatch],
                    node_pairs: dict[CallRef, tuple[CallRef, str]], covered: dict[str, dict[CallRef, CallRef]]) -> list[CallMatch]:
        """Match the calls that hold other calls (a ``BasicBlock``) by the calls they hold.

        A container of A whose first and last inner calls are aligned is matched with the container
        of B that holds exactly their counterparts (the outermost one; those inside it only wrap it
        and are accounted for), else with the span of B's calls between them, compared at the
        span's boundary where A's container has the boundary of its own first and last inner calls
        (its input is the first one's, its output the last one's: no residual added after them).
        A container pair matched by layer map or route is kept as it is; a structural guess is kept
        where the calls inside agree with it.
        """
        spans = {side: self._spans(side, seqs[side]) for side in ("a", "b")}
        partner_low: dict[int, int] = {}
        partner_high: dict[int, int] = {}
        position = {side: {ref: i for i, ref in enumerate(seqs[side])} for side in ("a", "b")}
        for match in matches:
            if match.b[0] not in position["b"] or match.b[-1] not in position["b"]:
                continue  # a group the layer map gave: its containers come from the map too
            low, high = position["b"][match.b[0]], position["b"][match.b[-1]]
            for ref in match.a:
                if ref in position["a"]:
                    partner_low[position["a"][ref]], partner_high[position["a"][ref]] = low, high
        by_span_b: dict[tuple[int, int], list[CallRef]] = {}
        for ref, span in spans["b"].items():
            if ref not in covered["b"]:
                by_span_b.setdefault(span, []).append(ref)  # outermost first: calls are in begin order
        result = []
        claimed_b: set[CallRef] = set()
        # a container around the members of one match only wraps them (an ONNX module around its op)
        for side in ("a", "b"):
            for ref, (low, high) in spans[side].items():
                if low == high:
                    self.accounted.add((side, ref[0]))
        for ca in self.calls["a"]:
            if ca in covered["a"] or ca in position["a"] or ca in self.leaf["a"]:
                continue
            span_a = spans["a"].get(ca)
            wanted = None
            if span_a is not None and span_a[0] in partner_low and span_a[1] in partner_high:
                # the calls inside may run in another order on B's side (a shortcut branch first)
                inside = [k for k in range(span_a[0], span_a[1] + 1) if k in partner_low]
                wanted = (min(partner_low[k] for k in inside), max(partner_high[k] for k in inside))
            given = node_pairs.get(ca)
            if given is not None and given[0] not in covered["b"] and given[0] not in position["b"] and (
                    given[1] != "structural" or wanted is None or spans["b"].get(given[0]) == wanted):
                result.append(CallMatch((ca,), (given[0],), given[1], self._transforms(ca[0], given[0][0]), params=False))
                claimed_b.add(given[0])
                continue
            if wanted is None or span_a is None:
                continue
            holders = [cb for cb in by_span_b.get(wanted, []) if cb not in claimed_b]
            if holders:
                result.append(CallMatch((ca,), (holders[0],), "dataflow", params=False))
                claimed_b.update(holders)
                self.accounted.update(("b", cb[0]) for cb in holders)
            elif self._same_boundary(ca, seqs["a"][span_a[0]], seqs["a"][span_a[1]]):
                inner_b = tuple(seqs["b"][wanted[0]:wanted[1] + 1])
                result.append(CallMatch((ca,), inner_b, "dataflow", params=False, backward=False))
        return result

    def _same_boundary(self, container: CallRef, first: CallRef, last: CallRef) -> bool:
        """Does A's ``container`` take the input of ``first`` and give the output of ``last``?"""
        step = self.va.steps[0]

        def value(ref: CallRef, role: str) -> Any:
            call = self.calls["a"][ref]
            return describe_call(self.va, step, ref[0], ref[1], call.begin, call.end).__getattribute__(role)

        for role, inner in (("input", first), ("output", last)):
            distance = value_distance(value(container, role), value(inner, role))
            if distance is None or distance > 0:
                return False
        return True

    def _coverage(self, in_sequence: dict[str, dict[CallRef, str]], covered: dict[str, dict[CallRef, CallRef]]) -> dict[str, Any]:
        compared = {"a": 0, "b": 0}
        by_method: dict[str, int] = {}
        for side in ("a", "b"):
            for ref in self.leaf[side]:
                method = in_sequence[side].get(ref)
                if method is None and ref in covered[side]:
                    method = in_sequence[side].get(covered[side][ref])
                if method is None:
                    continue
                compared[side] += 1
                if side == "a":
                    by_method[method] = by_method.get(method, 0) + 1
        return {"leaf": {side: len(self.leaf[side]) for side in ("a", "b")}, "compared": compared, "by_method": by_method}

    def _unmatched(self, seqs: dict[str, list[CallRef]], matches: list[CallMatch],
                   infos: dict[str, list[Any]]) -> list[UnmatchedCall]:
        """Each leaf call of either sequence that no match covers, with what the other side has there."""
        position = {side: {ref: i for i, ref in enumerate(seq)} for side, seq in seqs.items()}
        partner: dict[str, dict[int, int]] = {"a": {}, "b": {}}
        for match in matches:
            for side, mine, theirs, other_side in (("a", match.a, match.b, "b"), ("b", match.b, match.a, "a")):
                there = position[other_side].get(theirs[-1])
                for ref in mine:
                    if ref in position[side] and there is not None:
                        partner[side][position[side][ref]] = there
        found = []
        for side, other_side in (("a", "b"), ("b", "a")):
            view = self.va if side == "a" else self.vb
            seq, matched = seqs[side], sorted(partner[side])
            taken = set(partner[other_side])
            for i, ref in enumerate(seq):
                if i in partner[side]:
                    continue
                k = bisect.bisect_left(matched, i)
                before = matched[k - 1] if k > 0 else None
                after = matched[k] if k < len(matched) else None
                low = partner[side][before] if before is not None else -1
                high = partner[side][after] if after is not None else len(seqs[other_side])
                gap = sum(1 for j in range(low + 1, high) if j not in taken)
                where = f"between {self._neighbour(view, seq, before, 'the start')} and {self._neighbour(view, seq, after, 'the end')}"
                if gap == 0:
                    reason = (f"the other trace records no call {where} (counterparts of its neighbours): it computes "
                              "this outside any recorded module (a functional op), fused into a neighbour, or not at all")
                else:
                    reason = (f"none of the {gap} unmatched call(s) of the other trace {where} computes the same "
                              f"{infos[side][i].family} (op family, shapes and values differ)")
                node = view.nodes[ref[0]]
                found.append(UnmatchedCall(side, ref[0], ref[1], node.route, node.class_name, reason))
        return found

    @staticmethod
    def _neighbour(view: RankView, seq: list[CallRef], index: int | None, default: str) -> str:
        if index is None:
            return default
        return repr(view.nodes[seq[index][0]].route or "(root)")


def _call_parents(calls: dict[CallRef, Call], view: RankView) -> dict[CallRef, CallRef | None]:
    """The innermost call enclosing each call: its interval holds the call's, and its node is an
    ancestor of the call's node (an ONNX module whose ops are not contiguous records one interval
    that spans other modules' ops, which are not inside it)."""
    ancestors: dict[int, set[int]] = {}

    def holds(outer: int, inner: int) -> bool:
        if inner not in ancestors:
            ancestors[inner] = set(view.ancestors(inner))
        return outer in ancestors[inner]

    parents: dict[CallRef, CallRef | None] = {}
    stack: list[tuple[CallRef, Call]] = []
    for ref, call in calls.items():  # in begin order
        while stack and stack[-1][1].end < call.begin:
            stack.pop()
        parents[ref] = next((outer for outer, span in reversed(stack)
                             if span.begin < call.begin and call.end < span.end and holds(outer[0], ref[0])), None)
        stack.append((ref, call))
    return parents


def alignment_layer_map(alignment: Alignment, view_a: RankView, view_b: RankView, layer_map: LayerMap | None = None) -> str:
    """The alignment as a layer map (YAML text) that ``--layer-map`` reproduces: a node whose calls
    all go to the same calls of one node of B as a route entry, any other call or group as a call
    entry, and what stayed unmatched as comments. Routes are written after the prefix rules of
    ``layer_map``, whose prefix sections are kept."""
    layer_map = layer_map or LayerMap()

    def route(side: str, node: int) -> str:
        view, prefixes = (view_a, layer_map.prefixes_a) if side == "a" else (view_b, layer_map.prefixes_b)
        return prefixes.apply(view.nodes[node].route)

    partners: dict[int, set[tuple[int, int]]] = {}
    for match in alignment.calls:
        if len(match.a) == 1 and len(match.b) == 1:
            (a, call_a), (b, call_b) = match.a[0], match.b[0]
            partners.setdefault(a, set()).add((b, call_a - call_b))
    node_pairs = {m.a: m.b for m in alignment.matches if partners.get(m.a, {(m.b, 0)}) == {(m.b, 0)}}
    call_pairs = []
    for match in alignment.calls:
        (a, _), (b, _) = match.a[0], match.b[0]
        if not (len(match.a) == 1 and len(match.b) == 1 and partners.get(a) == {(b, 0)} and node_pairs.setdefault(a, b) == b):
            call_pairs.append(([(route("a", n), k) for n, k in match.a], [(route("b", n), k) for n, k in match.b]))
    notes = [
        f"A layer map written by tracespec diff --save-map: the alignment of {view_a.trace.path} (A) and",
        f"{view_b.trace.path} (B), rank {view_a.rank}. Correct what is wrong and pass it back with --layer-map.",
        "Entries: {a: route, b: route} pairs two nodes, call for call; 'route#k' names its k-th call;",
        "a list names consecutive calls compared as one group (a fused Conv + BatchNorm) at its boundary.",
    ]
    notes += [f"unmatched {u.side.upper()} {u.route or '(root)'}#{u.call} ({u.class_name}): {u.reason}" for u in alignment.unmatched_calls]
    pairs = sorted((route("a", a), route("b", b)) for a, b in node_pairs.items())
    return layer_map_document([(_exact_pattern(a), _exact_pattern(b)) for a, b in pairs], call_pairs, notes, layer_map)


def _exact_pattern(route: str) -> str:
    """A route as a layer-map pattern that matches only itself."""
    return route if not any(c in route for c in "*?") and not route.startswith("re:") else "re:^" + re.escape(route) + "$"


def align_trees(view_a: RankView, view_b: RankView, layer_map: LayerMap | None = None) -> Alignment:
    """Align the module trees and the calls of ``view_a`` and ``view_b`` (see the module docstring)."""
    aligner = _Aligner(view_a, view_b, layer_map or LayerMap())
    aligner.by_layer_map()
    aligner.by_exact_route()
    aligner.structural()
    phase = _CallPhase(aligner)
    calls, unmatched_calls, coverage = phase.run()
    aligner.adopt_call_matches(calls, phase.leaf, phase.accounted)
    matches = tuple(sorted(aligner.matches.values(), key=lambda m: m.a))
    return Alignment(matches, tuple(aligner.unmatched()), len(view_a.nodes), len(view_b.nodes),
                     tuple(calls), tuple(unmatched_calls), coverage["leaf"], coverage["compared"], coverage["by_method"])


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
