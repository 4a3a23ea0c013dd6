"""Diagnosis: which node *introduced* a divergence, which only *inherited* it, and how error grows.

Constraints: pure functions over comparison results (no data, no framework). Works per (step, rank,
stage) on *units*: one call of one matched node, walked in execution order (completion order, the
``end`` counter, so a child comes before its parent).

- A unit whose outputs diverge while everything it consumed agrees **introduced** the divergence.
  What it consumed: forward, its inputs (and its parameters: a differing weight makes the node the
  culprit, with that as evidence); backward, its output gradients and the inputs and parameters of
  its forward call; update, the gradients and forward values of its parameters.
- A unit whose outputs diverge because something it consumed already diverged **inherited** it.
- A unit that would have introduced it but has a descendant (running inside its call) that did
  **contains** it. A module whose children all pass but that fails itself is therefore the culprit:
  the error came from its own code between or around its children.
- The first divergence is searched step by step, stage by stage (forward, backward, update), rank
  by rank: the first unit that introduced one, else the first that diverged at all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

from tracespec.compare.metrics import Metrics
from tracespec.compare.view import OpSite, Record

__all__ = ["RecordResult", "UnitResult", "classify_units", "error_growth", "first_divergence", "next_step_hint"]

DIVERGED: Final = "diverged"


@dataclass(slots=True)
class RecordResult:
    """The comparison of one pair of records (or a record without a counterpart)."""

    role: str
    slot: str
    call: int | None
    status: str
    metrics: Metrics | None = None
    dtype_a: str | None = None
    dtype_b: str | None = None
    shape_a: list[int] | None = None
    shape_b: list[int] | None = None
    transform: str | None = None
    note: str | None = None
    mismatch: dict[str, Any] | None = None
    """Why the pair could not be measured: ``{kind: "shape", shape: {a, b}, dtype: {a, b}}``."""
    noise: dict[str, Any] = field(default_factory=dict)
    """How the noise floor was set (``scale``, ``scale_from``...) and what was explained as benign."""
    sources: tuple[Record, Record, Any] | None = field(default=None, repr=False, compare=False)
    """The records of A and B and B's transform, for a second look at the data (kinks)."""
    shared: list[RecordResult] = field(default_factory=list, repr=False, compare=False)
    """Every result of the same tensor pair (this one included): judged once, re-judged together."""

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "role": self.role,
            "slot": self.slot,
            "call": self.call,
            "status": self.status,
            "dtype": {"a": self.dtype_a, "b": self.dtype_b},
            "shape": {"a": self.shape_a, "b": self.shape_b},
        }
        if self.transform:
            doc["transform"] = self.transform
        if self.metrics is not None:
            doc["metrics"] = self.metrics.to_json()
        if self.note:
            doc["note"] = self.note
        if self.mismatch is not None:
            doc["mismatch"] = self.mismatch
        if self.noise:
            doc["noise"] = self.noise
        return doc

    @property
    def badness(self) -> float:
        """How far beyond tolerance (for ranking); identical is 0, diverged without a ratio is inf."""
        if self.metrics is None:
            return 0.0
        if self.metrics.tolerance_ratio is not None:
            return self.metrics.tolerance_ratio
        return float("inf") if self.status == DIVERGED else 0.0


@dataclass(slots=True)
class UnitResult:
    """One call of one matched node in a (step, rank, stage), with its records' results.

    ``upstream`` holds what the unit consumed that was produced elsewhere (inputs, output
    gradients, the forward inputs and parameters of a backward call); ``params`` the forward
    call's own parameters and buffers; ``outputs`` what it produced. A differing parameter makes
    the unit diverge even where its outputs happen to agree.
    """

    step: int
    rank: int
    stage: str
    a_node: int
    b_node: int
    a_route: str
    b_route: str
    a_class: str
    b_class: str
    call: int | None
    begin: int | None
    end: int | None
    depth: int
    ancestors: tuple[int, ...]
    upstream: list[RecordResult] = field(default_factory=list)
    params: list[RecordResult] = field(default_factory=list)
    outputs: list[RecordResult] = field(default_factory=list)
    divergence: str | None = None
    evidence: str | None = None
    method: str | None = None
    """How the unit's calls were aligned: layer_map, exact, structural, dataflow or fused."""
    b_call: int | None = None
    """B's call, where it is not A's (a shared module's second call against another module)."""
    a_routes: tuple[str, ...] = ()
    b_routes: tuple[str, ...] = ()
    """The members of a group compared at its boundary (a fused Conv + BatchNorm); empty for one call."""
    a_site: OpSite | None = None
    b_site: OpSite | None = None
    """Where an op unit is called from (module, function, source line); None for a module."""
    inside: tuple[int, int] = (0, 0)
    """Leaf calls of A and of B inside the unit's calls that the other side does not record (see
    :class:`~tracespec.compare.calls.CallMatch`): the unit is compared at their boundary."""

    def side_json(self, side: str) -> dict[str, Any]:
        """``{"route", "class_name"}`` of one side, with ``routes`` when that side is a group and
        ``op_site`` when it is an op called by forward code."""
        route, class_name, routes, site = (
            (self.a_route, self.a_class, self.a_routes, self.a_site)
            if side == "a"
            else (self.b_route, self.b_class, self.b_routes, self.b_site)
        )
        doc: dict[str, Any] = {"route": route, "class_name": class_name}
        if site is not None:
            doc["op_site"] = site.to_json()
        if side == "b" and self.b_call is not None and self.b_call != self.call:
            doc["call"] = self.b_call
        if self.a_routes or self.b_routes:
            doc["routes"] = list(routes) or [route]
        return doc

    @property
    def status(self) -> str:
        own = (*self.params, *self.outputs)
        if any(r.status == DIVERGED for r in own):
            return DIVERGED
        statuses = {r.status for r in own}
        if not statuses or statuses <= {"skipped"}:
            return "skipped"
        return "pass" if statuses <= {"pass", "skipped"} else "pass_within_tolerance"

    def evidence_record(self) -> RecordResult | None:
        """The own record that shows the divergence best: a diverged output (else parameter), the
        worst by tolerance ratio; a pair that could not be measured (shapes differ) counts as worst."""
        own = [*self.outputs, *self.params]
        diverged = [r for r in own if r.status == DIVERGED]
        if not diverged:
            return self.worst_output()
        return max(diverged, key=lambda r: (r in self.outputs, r.metrics is None, r.badness, -own.index(r)))

    def worst_output(self) -> RecordResult | None:
        compared = [r for r in self.outputs if r.metrics is not None]
        if not compared:
            return None
        return max(compared, key=lambda r: (r.status == DIVERGED, r.badness, -self.outputs.index(r)))

    def contains_time_of(self, other: UnitResult) -> bool:
        if self.begin is None or self.end is None or other.begin is None or other.end is None:
            return True
        return self.begin <= other.begin and other.end <= self.end

    def to_json(self) -> dict[str, Any]:
        worst = self.worst_output()
        return {
            "step": self.step,
            "rank": self.rank,
            "stage": self.stage,
            "call": self.call,
            "a": self.side_json("a"),
            "b": self.side_json("b"),
            "alignment": self.method,
            "status": self.status,
            "divergence": self.divergence,
            "evidence": self.evidence,
            "metrics": worst.metrics.to_json() if worst is not None and worst.metrics is not None else None,
            "records": [r.to_json() for r in (*self.upstream, *self.params, *self.outputs)],
        }


def _describe(record: RecordResult) -> str:
    name = f"{record.role}[{record.slot}]"
    if record.mismatch is not None:
        shapes, dtypes = record.mismatch["shape"], record.mismatch["dtype"]
        return f"{name} (shape {shapes['a']} {dtypes['a']} in A, {shapes['b']} {dtypes['b']} in B)"
    if isinstance(record.noise.get("kinks"), str):
        return f"{name} (kink flips {record.noise['kinks']})"
    return name


def classify_units(units: list[UnitResult]) -> None:
    """Set ``divergence`` and ``evidence`` of the units of one (step, rank, stage), in order."""
    introduced: list[UnitResult] = []
    for unit in units:
        if unit.status != DIVERGED:
            continue
        upstream = [r for r in unit.upstream if r.status == DIVERGED]
        culprit_params = [r for r in unit.params if r.status == DIVERGED]
        bad_outputs = ", ".join(_describe(r) for r in unit.outputs if r.status == DIVERGED) or "nothing it computed"
        if upstream:
            unit.divergence = "inherited"
            unit.evidence = f"{bad_outputs} differ(s) because {', '.join(_describe(r) for r in upstream)} already differ(s)"
            continue
        inside = [other for other in introduced if unit.a_node in other.ancestors and unit.contains_time_of(other)]
        if inside:
            unit.divergence = "contains"
            unit.evidence = f"introduced inside it, by {inside[0].a_route!r}"
            continue
        unit.divergence = "introduced"
        if culprit_params:
            unit.evidence = f"{bad_outputs} differ(s) and its own {', '.join(_describe(r) for r in culprit_params)} differ(s)"
        elif unit.stage == "backward":
            unit.evidence = f"{bad_outputs} differ(s) although its output gradients and forward values agree"
        elif unit.stage == "update":
            unit.evidence = f"{bad_outputs} differ(s) although the parameters' gradients and forward values agree"
        elif max(unit.inside) > 1:
            side, other = ("A", "B") if unit.inside[0] > 1 else ("B", "A")
            unit.evidence = (
                f"{bad_outputs} differ(s) although its inputs agree ({other} records no call inside it: "
                f"compared at its boundary, where a difference in any of {side}'s {max(unit.inside)} "
                "calls inside, their weights or hyper-parameters shows)"
            )
        elif unit.a_routes or unit.b_routes:
            unit.evidence = (
                f"{bad_outputs} differ(s) although its inputs agree (a fused group, compared at its "
                "boundary: a difference in any member, its weights or hyper-parameters shows here)"
            )
        else:
            unit.evidence = f"{bad_outputs} differ(s) although its inputs and parameters agree"
        introduced.append(unit)


def first_divergence(ordered_groups: list[list[UnitResult]]) -> UnitResult | None:
    """The first unit that introduced a divergence, searching group by group (each group is one
    (step, stage) across ranks, in rank then execution order); else the first that diverged."""
    for group in ordered_groups:
        for unit in group:
            if unit.divergence == "introduced":
                return unit
        for unit in group:
            if unit.status == DIVERGED:
                return unit
    return None


def error_growth(units: list[UnitResult]) -> list[dict[str, Any]]:
    """The scale-free error (RMSE / reference RMS) of each unit's worst output, in order."""
    curve = []
    for unit in units:
        worst = unit.worst_output()
        if worst is None or worst.metrics is None:
            continue
        metrics = worst.metrics
        if metrics.identical:
            rel_rmse, max_abs = 0.0, 0.0
        elif metrics.kind == "elementwise":
            doc = metrics.to_json()
            rel_rmse, max_abs = doc["rel_rmse"], doc["max_abs"]
        else:
            continue
        curve.append(
            {
                "step": unit.step,
                "rank": unit.rank,
                "stage": unit.stage,
                "route": unit.a_route,
                "call": unit.call,
                "depth": unit.depth,
                "rel_rmse": rel_rmse,
                "max_abs": max_abs,
                "status": unit.status,
            }
        )
    return curve


def next_step_hint(culprit: UnitResult | None, identical: bool, unmatched: int = 0) -> str:
    """One line saying what to try next."""
    if culprit is None:
        if unmatched:
            return (
                f"A and B agree on everything aligned, but {unmatched} node(s) or call(s) have no counterpart: "
                "read 'unmatched'; --save-map map.yaml writes the alignment found, to correct and pass back "
                "with --layer-map map.yaml."
            )
        if identical:
            return "A and B are bitwise identical in everything compared."
        return "A and B agree within tolerance; tighten with --mode strict (elementwise), --rel-rmse or --mode bitwise to see smaller differences."
    where = f"{culprit.a_route or '(root)'} ({culprit.a_class})"
    if culprit.divergence != "introduced":
        if culprit.stage == "forward":
            return f"The first divergence at {where} is inherited from its inputs: compare the model inputs (data, tokenizer, seeds)."
        return f"The first divergence at {where} is inherited: look at what feeds it ({culprit.evidence})."
    if any(r.status == DIVERGED for r in culprit.params):
        return f"{where} holds different weights: check weight loading or conversion (tracespec diff on the checkpoints)."
    if culprit.stage == "backward":
        return f"{where} computes a different backward from equal output gradients: check custom autograd Functions, backward hooks or detach() in it."
    if culprit.stage == "update":
        return f"The optimizer update of {where} differs: compare optimizer hyper-parameters (lr, betas, eps, weight decay)."
    if "dropout" in culprit.a_class.lower():
        return f"{where} differs from equal inputs: dropout is active in one run; call model.eval() (or seed both runs the same way)."
    if culprit.a_site is not None:
        site = culprit.a_site
        line = f"the line {site.source.file}:{site.source.line}" if site.source else "the code"
        return (
            f"{culprit.a_class} in the forward of {site.module or '(root)'} computes differently from equal inputs: "
            f"read {line} and B's counterpart (operands, scale, mask, dtype casts)."
        )
    if max(culprit.inside) > 1:
        coarse = "B" if culprit.inside[0] > 1 else "A"
        return (
            f"{where} differs from equal inputs, compared at its boundary: record {coarse} again with the calls inside it "
            f"(in a compiled model, select it with its children: include=[{culprit.a_route!r}]) to see which one introduced it."
        )
    weights = " and weights" if culprit.params else ""  # say "weights" only where they were compared
    return (
        f"{where} computes differently from equal inputs{weights}: compare its forward code and "
        "hyper-parameters (eps, approximate=, scale, dtype casts, train/eval mode)."
    )
