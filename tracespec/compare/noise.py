"""The noise floor of a gradient: the magnitudes of the computation that produced it.

Constraints: reads recorded statistics only (no tensor data), no framework import; one pass over a
rank's records per step, then a walk up the module tree per record.

A gradient is a sum of products of the gradients flowing back through a module and the values it
computed with. Where those terms cancel — analytically zero gradients such as ``d mean(LayerNorm(x))
/ dx``, or the bias of an attention key, which softmax ignores — the result is rounding noise of
the size of the *terms*, not of the result: judging it against its own RMS (~1e-9) fails two
correct runs. The terms are of the size of the gradients that flow through the module's enclosing
scope: the **scope RMS** is the RMS of every gradient of the same group (input/output gradients,
or parameter gradients) recorded in the subtree of each of its ancestors, the largest of them (for
parameter gradients, the gradient of the ancestor's whole parameter vector, which is what an
optimizer consumes). A gradient whose own RMS is below :data:`CANCELLED_BELOW` times its scope RMS
is a cancellation and is judged against the scope RMS; any other gradient keeps its own scale (a
gradient of ordinary size is its own best measure: judging it against a larger scope would hide
a wrong backward). Forward values are never widened: their magnitude is set by their own
computation, and a forward bug of the size of a rounding error of a larger neighbour (a LayerNorm
epsilon on small activations) must still fail.
"""

from __future__ import annotations

import math
from typing import Final

from tracespec.compare.view import RankView, Record

__all__ = ["CANCELLED_BELOW", "ROLE_GROUPS", "SCOPED_GROUPS", "ScopeScales", "record_rms"]

ROLE_GROUPS: Final = {
    "input": "activation",
    "output": "activation",
    "parameter": "parameter",
    "buffer": "parameter",
    "grad_output": "gradient",
    "grad_input": "gradient",
    "parameter_grad": "parameter_grad",
    "optimizer_state": "optimizer_state",
}
"""Tensors of one group and (step, stage) share a typical magnitude (``engine.typical_rms``)."""

SCOPED_GROUPS: Final = frozenset({"gradient", "parameter_grad"})
"""Groups whose scale may be the scope RMS (gradients: sums whose terms may cancel)."""

CANCELLED_BELOW: Final = 1e-3
"""A gradient more than 1000x smaller (RMS) than the gradients of its scope is a cancellation. In
float32, rounding leaves cancellation noise at ~1e-7 of the terms and more (1e-9 against a scope
of 6e-3 in PaDiff's LayerNorm block, 1e-8 against 0.1 for an attention key's bias), far below
1e-3; a gradient that a bug shrank to 1e-3 of its scope in A is not what B is compared against
(A is the reference), and where A's gradient is ordinary, its own scale applies."""


def record_rms(record: Record) -> float | None:
    """The RMS of a record's finite elements, from its recorded statistics (None without them)."""
    stats = record.stats
    if stats is None or stats.l2 is None:
        return None
    finite = stats.count - stats.nan_count - stats.inf_count
    return stats.l2 / finite**0.5 if finite > 0 else None


class ScopeScales:
    """The scope RMS of each gradient record of one rank of A (see the module docstring)."""

    def __init__(self, view: RankView) -> None:
        self.view = view
        self._sums: dict[int, dict[tuple[str, str, int], tuple[float, int]]] = {}

    def _subtree_sums(self, step: int) -> dict[tuple[str, str, int], tuple[float, int]]:
        """(stage, group, node) -> (sum of squares, finite elements) over the node's subtree."""
        found = self._sums.get(step)
        if found is not None:
            return found
        found = {}
        for (stage, node), records in self.view.step_records(step).items():
            for record in records:
                group = ROLE_GROUPS[record.role]
                if group not in SCOPED_GROUPS or record.stats is None or record.stats.l2 is None:
                    continue
                squares = record.stats.l2**2
                finite = record.stats.count - record.stats.nan_count - record.stats.inf_count
                if not math.isfinite(squares) or finite <= 0:
                    continue
                for owner in (node, *self.view.ancestors(node)):
                    total, count = found.get((stage, group, owner), (0.0, 0))
                    found[(stage, group, owner)] = (total + squares, count + finite)
        self._sums = {step: found}  # steps are walked in order: one step's sums at a time
        return found

    def scope(self, record: Record) -> tuple[float, str] | None:
        """For a cancelled gradient, the largest RMS of its group over the subtree of one of its
        node's ancestors, with that ancestor's route; None for forward values, gradients of
        ordinary size, or without statistics."""
        group = ROLE_GROUPS[record.role]
        own = record_rms(record)
        if group not in SCOPED_GROUPS or own is None:
            return None
        sums = self._subtree_sums(record.step)
        best: tuple[float, str] | None = None
        for ancestor in self.view.ancestors(record.node):
            total, count = sums.get((record.stage, group, ancestor), (0.0, 0))
            if count and (best is None or math.sqrt(total / count) > best[0]):
                best = (math.sqrt(total / count), self.view.nodes[ancestor].route)
        return best if best is not None and own < CANCELLED_BELOW * best[0] else None
