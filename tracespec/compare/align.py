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

4. **calls**, by what they compute (:mod:`tracespec.compare.calls`, :mod:`tracespec.compare.dataflow`):
   the leaf calls the node pipeline left to guess, containers by the calls they hold, fused groups.

Known cross-framework layouts are applied as tensor transforms on B's side
(:data:`~tracespec.compare.layouts.LAYOUT_RULES`): a Paddle ``Linear`` stores ``weight`` as
``[in, out]``, a PyTorch one as ``[out, in]``.
"""

from __future__ import annotations

import collections
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from tracespec.compare.calls import CALL_METHODS, CallMatch, CallPhase, CallRef, UnmatchedCall
from tracespec.compare.layer_map import LayerMap, Transform, load_layer_map, parse_layer_map
from tracespec.compare.layouts import LAYOUT_RULES, layout_transforms
from tracespec.compare.sequence import EditOp, diff_sequences
from tracespec.compare.view import RankView

__all__ = [
    "CLASS_ALIASES",
    "LAYOUT_RULES",
    "Aligner",
    "Alignment",
    "CallMatch",
    "EditOp",
    "LayerMap",
    "Match",
    "Transform",
    "Unmatched",
    "UnmatchedCall",
    "align_trees",
    "diff_sequences",
    "load_layer_map",
    "parse_layer_map",
]

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


STRUCTURAL_CELLS: Final = 40_000
"""Children of A x children of B beyond which structural alignment runs only on lists that are
alike, and pairs the runs a diff leaves over greedily (bounded time for flat graphs of 10k ops)."""


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
    calls_by_method: dict[str, dict[str, int]] = field(default_factory=lambda: {"a": {}, "b": {}})
    boundary_calls: dict[str, int] = field(default_factory=lambda: {"a": 0, "b": 0})
    """Compared leaf calls held, several together, inside a call matched with a call of the other
    side that records none inside it (a region compiled as one graph): compared at its boundary."""

    def method_counts(self) -> dict[str, int]:
        counts = dict.fromkeys(CALL_METHODS, 0)
        for match in self.matches:
            counts[match.method] += 1
        return counts

    def call_coverage(self) -> dict[str, Any]:
        """The share of each side's leaf calls (first step, forward) that is compared, by method."""
        return {
            "leaf_a": self.leaf_calls["a"],
            "leaf_b": self.leaf_calls["b"],
            "compared_a": self.compared_calls["a"],
            "compared_b": self.compared_calls["b"],
            "fraction_a": self.compared_calls["a"] / self.leaf_calls["a"] if self.leaf_calls["a"] else 1.0,
            "fraction_b": self.compared_calls["b"] / self.leaf_calls["b"] if self.leaf_calls["b"] else 1.0,
            "by_method": {m: self.calls_by_method["a"].get(m, 0) for m in CALL_METHODS},
            "by_method_b": {m: self.calls_by_method["b"].get(m, 0) for m in CALL_METHODS},
            "boundary_a": self.boundary_calls["a"],
            "boundary_b": self.boundary_calls["b"],
        }


class Aligner:
    def __init__(self, view_a: RankView, view_b: RankView, layer_map: LayerMap) -> None:
        self.va, self.vb, self.map = view_a, view_b, layer_map
        self.norm_a = {n: layer_map.prefixes_a.apply(view_a.nodes[n].route) for n in view_a.nodes}
        self.norm_b = {n: layer_map.prefixes_b.apply(view_b.nodes[n].route) for n in view_b.nodes}
        self.b_by_norm = self.route_index("b")
        self.matches: dict[int, Match] = {}
        self.claimed_b: dict[int, int] = {}
        self.reasons: dict[tuple[str, int], str] = {}
        self.ignored = {("a", n) for n in view_a.nodes if any(p.regex.fullmatch(self.norm_a[n]) for p in layer_map.ignore_a)} | {
            ("b", n) for n in view_b.nodes if any(p.regex.fullmatch(self.norm_b[n]) for p in layer_map.ignore_b)
        }
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
        merged = {**layout_transforms(self.va, self.vb, a, b), **(transforms or {})}
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
            self.reasons[(side, wrapper)] = f"a wrapper: its only child {view.nodes[kids[0]].route!r} was aligned in its place"
            self.ignored.add((side, wrapper))
            return kids[0]
        return None

    def by_exact_route(self) -> None:
        for a in sorted(self.va.nodes):
            if not self._free("a", a) or ("a", a) in self.reasons or self.va.nodes[a].kind == "op":
                continue  # an op's route counts its calls by name (``mul#2``): a place, not a name
            b = self.b_by_norm.get(self.norm_a[a])
            if b is None or not self._free("b", b) or self.vb.nodes[b].kind == "op":
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
        return (
            self._class(side, node),
            view.forward_call_count(node),
            tuple(sorted(outputs)),
            tuple(sorted(params)),
            self._leaf_profile(side, node),
        )

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
                math.prod(r.shape)
                for r in view.node_records(current)
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
        return sorted(
            kids,
            key=lambda k: (
                view.first_call_begin(k) if view.first_call_begin(k) is not None else never,
                view.nodes[k].position,
                k,
            ),
        )

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
                len(seq_a),
                len(seq_b),
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

    def adopt_call_matches(self, calls: list[CallMatch], leaf: dict[str, set[CallRef]], accounted: set[tuple[str, int]]) -> None:
        """Make the node matches agree with the call alignment: a structural guess about a leaf
        yields to what the calls compute, and one-to-one call matches pair their nodes' parameters.
        Nodes in ``accounted`` (aligned or reported call by call) are not reported as nodes."""
        leaf_nodes_a = {node for node, _ in leaf["a"]}
        for node_a, node_match in list(self.matches.items()):
            if node_match.method == "structural" and node_a in leaf_nodes_a:
                del self.claimed_b[node_match.b]
                del self.matches[node_a]
        for call_match in calls:
            a, b = call_match.a[0][0], call_match.b[0][0]
            if call_match.params and a not in self.matches and b not in self.claimed_b:
                self._claim(a, b, call_match.method)
        self.accounted = accounted

    def unmatched(self) -> list[Unmatched]:
        """Nodes without a counterpart, except those aligned call by call and those that hold
        nothing to compare (no call, no record: a container that never ran itself)."""
        found = []
        sides: tuple[tuple[str, RankView, Callable[[int], bool]], ...] = (
            ("a", self.va, lambda n: n not in self.matches),
            ("b", self.vb, lambda n: n not in self.claimed_b),
        )
        for side, view, free in sides:
            active = view.active_nodes()
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


def align_trees(view_a: RankView, view_b: RankView, layer_map: LayerMap | None = None) -> Alignment:
    """Align the module trees and the calls of ``view_a`` and ``view_b`` (see the module docstring)."""
    aligner = Aligner(view_a, view_b, layer_map or LayerMap())
    aligner.by_layer_map()
    aligner.by_exact_route()
    aligner.structural()
    phase = CallPhase(aligner)
    calls, unmatched_calls, coverage = phase.run()
    aligner.adopt_call_matches(calls, phase.leaf, phase.accounted)
    matches = tuple(sorted(aligner.matches.values(), key=lambda m: m.a))
    return Alignment(
        matches,
        tuple(aligner.unmatched()),
        len(view_a.nodes),
        len(view_b.nodes),
        tuple(calls),
        tuple(unmatched_calls),
        coverage["leaf"],
        coverage["compared"],
        coverage["by_method"],
        coverage["boundary"],
    )
