"""Align the calls of two traces, after the node pipeline of :mod:`tracespec.compare.align`.

Constraints: pure functions over trace metadata (no tensor data, no framework import). The unit is
a *call*; what a call computes is told by :mod:`tracespec.compare.dataflow`; this module decides
which calls are leaves, which call stands for the calls inside it, how containers follow the calls
they hold, what the layer map's call entries pin, and what is reported unmatched and why.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from tracespec.compare.dataflow import align_call_sequences, describe_call, value_distance
from tracespec.compare.families import op_family
from tracespec.compare.layer_map import CallName, LayerMap, Transform, layer_map_document
from tracespec.compare.layouts import layout_transforms
from tracespec.compare.view import Call, RankView
from tracespec.errors import InputFileError

if TYPE_CHECKING:
    from tracespec.compare.align import Aligner, Alignment

__all__ = ["CALL_METHODS", "LOW_COVERAGE", "CallMatch", "CallPhase", "CallRef", "UnmatchedCall", "alignment_layer_map"]

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
    inside: tuple[int, int] = (0, 0)
    """Leaf calls of A and of B held inside ``a`` and ``b`` where the other side records no call
    inside its call (a region compiled as one graph, an ONNX module around its ops): compared only
    at this match's boundary."""


@dataclass(frozen=True, slots=True)
class UnmatchedCall:
    """A leaf call left without a counterpart, and why."""

    side: str
    node: int
    call: int
    route: str
    class_name: str
    reason: str


CALL_METHODS: Final = ("layer_map", "exact", "structural", "dataflow", "fused")

LOW_COVERAGE: Final = 0.9
"""Below this share of A's leaf calls compared, the report warns that a PASS covers only part of the model."""


class CallPhase:
    """Aligns the calls of one step's forward pass, after the node pipeline (see the module docstring).

    Leaf calls, the ones with no call nested inside, are what a model computes; a leaf on one side
    matched by layer map or route to a call that has nested calls on the other (a PyTorch ``Conv2d``
    against the ONNX module holding its ``Conv`` op) stands for those nested calls, which count as
    compared through it. The leaf calls left over are aligned by :mod:`tracespec.compare.dataflow`.
    """

    def __init__(self, aligner: Aligner) -> None:
        self.aligner = aligner
        self.va, self.vb = aligner.va, aligner.vb
        self.calls = {"a": self._forward_calls(self.va), "b": self._forward_calls(self.vb)}
        self.parent = {
            side: _call_parents(calls, view)
            for side, calls, view in (("a", self.calls["a"], self.va), ("b", self.calls["b"], self.vb))
        }
        self.leaf = {
            side: set(calls) - {p for p in self.parent[side].values() if p is not None} for side, calls in self.calls.items()
        }
        self.accounted: set[tuple[str, int]] = set()
        """Nodes aligned or reported call by call, which the node-level report leaves out."""
        self.rule_transforms: dict[tuple[CallRef, CallRef], dict[str, Transform]] = {}

    @staticmethod
    def _forward_calls(view: RankView) -> dict[CallRef, Call]:
        if not view.steps:
            return {}
        calls = sorted(view.calls_of(view.steps[0], "forward"), key=lambda c: (c.begin, -c.end))
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

    def _held_leaves(self, side: str, covered: dict[CallRef, CallRef]) -> dict[CallRef, int]:
        """For each call standing for the calls nested inside it, how many of them are leaf calls."""
        held: dict[CallRef, int] = {}
        for inner, outer in covered.items():
            if inner in self.leaf[side]:
                held[outer] = held.get(outer, 0) + 1
        return held

    def _transforms(self, a: int, b: int) -> dict[str, Transform]:
        """The node match's transforms (a layer map's, with the layout rules) where ``a`` and ``b`` are
        matched as nodes, else the layout rules alone."""
        match = self.aligner.matches.get(a)
        if match is not None and match.b == b:
            return match.transforms
        return layout_transforms(self.va, self.vb, a, b)

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
                    "first step does not have (routes are exact, after the prefix rules; #k counts from 0)"
                )
            if len(refs_a) == 1 and len(refs_b) == 1:
                anchors[refs_a[0]] = (refs_b[0], "layer_map")
                self.rule_transforms[(refs_a[0], refs_b[0])] = rule.transforms
            else:
                # a container of A against a span of B's calls: only the forward boundary compares
                # (see CallMatch); anything else is a fused group
                span = len(refs_a) == 1 and refs_a[0] not in self.leaf["a"] and len(refs_b) > 1
                groups.append(CallMatch(refs_a, refs_b, "layer_map", rule.transforms, params=False, backward=not span))
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
            side: [
                ref
                for ref in self.calls[side]
                if (ref in self.leaf[side] or ref in stands)
                and ref not in covered[side]
                and ref not in grouped[side]
                and (side, ref[0]) not in ignored
            ]
            for side, stands in (("a", stands_a), ("b", stands_b))
        }
        infos = {}
        for side, view in (("a", self.va), ("b", self.vb)):
            inner = self._inner_families(side, view, covered[side])
            infos[side] = [
                describe_call(
                    view, view.steps[0], ref[0], ref[1], self.calls[side][ref].begin, self.calls[side][ref].end, inner.get(ref)
                )
                for ref in seqs[side]
            ]
        position_b = {ref: j for j, ref in enumerate(seqs["b"])}
        anchors = [
            (i, position_b[trusted[ref][0]], trusted[ref][1])
            for i, ref in enumerate(seqs["a"])
            if ref in trusted and trusted[ref][0] in position_b
        ]
        structural = {ca: cb for ca, (cb, method) in node_pairs.items() if method == "structural"}
        held = {side: self._held_leaves(side, covered[side]) for side in ("a", "b")}
        matches: list[CallMatch] = list(given_groups)
        in_sequence: dict[str, dict[CallRef, str]] = {side: dict.fromkeys(grouped[side], "layer_map") for side in ("a", "b")}
        for pairing in align_call_sequences(infos["a"], infos["b"], anchors):
            refs_a = tuple(seqs["a"][i] for i in pairing.a)
            refs_b = tuple(seqs["b"][j] for j in pairing.b)
            method = pairing.method
            if method == "dataflow" and structural.get(refs_a[0]) == refs_b[0]:
                method = "structural"
            transforms = (
                self.rule_transforms.get((refs_a[0], refs_b[0])) or self._transforms(refs_a[0][0], refs_b[0][0])
                if pairing.same_layer
                else {}
            )
            inside = (held["a"].get(refs_a[0], 0), held["b"].get(refs_b[0], 0)) if len(refs_a) == len(refs_b) == 1 else (0, 0)
            matches.append(CallMatch(refs_a, refs_b, method, transforms, params=pairing.same_layer, inside=inside))
            for side, refs in (("a", refs_a), ("b", refs_b)):
                for ref in refs:
                    in_sequence[side][ref] = method
        matches += self._containers(seqs, matches, node_pairs, covered)
        consumed = self._consumed(seqs, matches, infos)
        unmatched = self._unmatched(seqs, matches, infos, consumed)
        coverage = self._coverage(in_sequence, covered, consumed)
        coverage["boundary"] = {side: sum(count for count in held[side].values() if count > 1) for side in ("a", "b")}
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

    def _containers(
        self,
        seqs: dict[str, list[CallRef]],
        matches: list[CallMatch],
        node_pairs: dict[CallRef, tuple[CallRef, str]],
        covered: dict[str, dict[CallRef, CallRef]],
    ) -> list[CallMatch]:
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
            if (
                given is not None
                and given[0] not in covered["b"]
                and given[0] not in position["b"]
                and (given[1] != "structural" or wanted is None or spans["b"].get(given[0]) == wanted)
            ):
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
                inner_b = tuple(seqs["b"][wanted[0] : wanted[1] + 1])
                result.append(CallMatch((ca,), inner_b, "dataflow", params=False, backward=False))
        return result

    def _same_boundary(self, container: CallRef, first: CallRef, last: CallRef) -> bool:
        """Does A's ``container`` take the input of ``first`` and give the output of ``last``?"""
        step = self.va.steps[0]
        outer, start, end = (
            describe_call(self.va, step, ref[0], ref[1], self.calls["a"][ref].begin, self.calls["a"][ref].end)
            for ref in (container, first, last)
        )
        return all(
            distance == 0 for distance in (value_distance(outer.input, start.input), value_distance(outer.output, end.output))
        )

    def _consumed(
        self, seqs: dict[str, list[CallRef]], matches: list[CallMatch], infos: dict[str, list[Any]]
    ) -> dict[str, dict[CallRef, tuple[str, str]]]:
        """Unmatched leaf calls whose output is the input of a matched call on their own side (an ONNX
        ``Add`` of a residual that PyTorch computes outside any module): that tensor is compared as
        the consumer's input, so the call counts as compared. By side: call -> (consumer's route,
        the consumer's alignment method)."""
        found: dict[str, dict[CallRef, tuple[str, str]]] = {"a": {}, "b": {}}
        for side, view in (("a", self.va), ("b", self.vb)):
            position = {ref: i for i, ref in enumerate(seqs[side])}
            inputs: dict[Any, tuple[str, str]] = {}
            for match in matches:
                first = (match.a if side == "a" else match.b)[0]
                if first in position:
                    key = _value_key(infos[side][position[first]].input)
                    if key is not None:
                        inputs.setdefault(key, (view.nodes[first[0]].route, match.method))
            matched = {ref for match in matches for ref in (match.a if side == "a" else match.b)}
            for ref, i in position.items():
                key = _value_key(infos[side][i].output)
                if ref not in matched and key in inputs:
                    found[side][ref] = inputs[key]
        return found

    def _coverage(
        self,
        in_sequence: dict[str, dict[CallRef, str]],
        covered: dict[str, dict[CallRef, CallRef]],
        consumed: dict[str, dict[CallRef, tuple[str, str]]],
    ) -> dict[str, Any]:
        compared = {"a": 0, "b": 0}
        by_method: dict[str, dict[str, int]] = {"a": {}, "b": {}}
        for side in ("a", "b"):
            for ref in self.leaf[side]:
                method = in_sequence[side].get(ref)
                if method is None and ref in covered[side]:
                    method = in_sequence[side].get(covered[side][ref])
                if method is None and ref in consumed[side]:
                    method = consumed[side][ref][1]
                if method is None:
                    continue
                compared[side] += 1
                by_method[side][method] = by_method[side].get(method, 0) + 1
        return {"leaf": {side: len(self.leaf[side]) for side in ("a", "b")}, "compared": compared, "by_method": by_method}

    def _unmatched(
        self,
        seqs: dict[str, list[CallRef]],
        matches: list[CallMatch],
        infos: dict[str, list[Any]],
        consumed: dict[str, dict[CallRef, tuple[str, str]]],
    ) -> list[UnmatchedCall]:
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
                    reason = (
                        f"the other trace records no call {where} (counterparts of its neighbours): it computes "
                        "this outside any recorded module (a functional op), fused into a neighbour, or not at all"
                    )
                else:
                    reason = (
                        f"none of the {gap} unmatched call(s) of the other trace {where} computes the same "
                        f"{infos[side][i].family} (op family, shapes and values differ)"
                    )
                if ref in consumed[side]:
                    reason += f"; its output is compared, as the input of {consumed[side][ref][0]!r}"
                node = view.nodes[ref[0]]
                found.append(UnmatchedCall(side, ref[0], ref[1], node.route, node.class_name, reason))
        return found

    @staticmethod
    def _neighbour(view: RankView, seq: list[CallRef], index: int | None, default: str) -> str:
        if index is None:
            return default
        return repr(view.nodes[seq[index][0]].route or "(root)")


def _value_key(value: Any) -> Any:
    """What identifies a tensor recorded twice in one trace: its content hash, else its statistics."""
    if value is None:
        return None
    if value.hash is not None:
        return ("hash", value.hash)
    stats = (value.count, value.mean, value.rms, value.min, value.max)
    return None if any(x is None for x in stats) else ("stats", *stats)


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
        parents[ref] = next(
            (
                outer
                for outer, span in reversed(stack)
                if span.begin < call.begin and call.end < span.end and holds(outer[0], ref[0])
            ),
            None,
        )
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
    notes += [
        f"unmatched {u.side.upper()} {u.route or '(root)'}#{u.call} ({u.class_name}): {u.reason}"
        for u in alignment.unmatched_calls
    ]
    pairs = sorted((route("a", a), route("b", b)) for a, b in node_pairs.items())
    return layer_map_document([(_exact_pattern(a), _exact_pattern(b)) for a, b in pairs], call_pairs, notes, layer_map)


def _exact_pattern(route: str) -> str:
    """A route as a layer-map pattern that matches only itself."""
    return route if not any(c in route for c in "*?") and not route.startswith("re:") else "re:^" + re.escape(route) + "$"
