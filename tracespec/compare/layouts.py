"""Parameter layouts: how each framework stores a weight, and what brings B's into A's layout.

Constraints: pure functions over trace metadata; no framework import.
"""

from __future__ import annotations

from typing import Final

from tracespec.compare.layer_map import TRANSPOSE, Transform
from tracespec.compare.view import RankView

__all__ = ["LAYOUT_RULES", "layout_transforms", "layouts"]

LAYOUT_RULES: Final[dict[tuple[str, str, str], str]] = {
    # (framework family, class name, parameter slot) -> how that framework lays the tensor out
    ("torch", "Linear", "weight"): "out_in",
    ("paddle", "Linear", "weight"): "in_out",
}
"""Native layouts of parameters that differ between frameworks. A node's ``attrs.parameter_layout``
(written by an adapter that knows better, e.g. ONNX Runtime's for an exporter's transposed weight)
overrides the rule for that node. Where A's and B's layouts of a matched pair differ, B's tensor is
transposed (last two axes) before comparing."""


def layouts(view: RankView, node: int) -> dict[str, str]:
    """How ``node`` lays out its parameters, by slot: the framework's rules for its class, overridden
    by the layout its adapter recorded for this node (``attrs.parameter_layout``)."""
    found = dict(_RULES_BY_CLASS.get((view.framework, view.nodes[node].class_name), {}))
    found.update(view.nodes[node].layouts)
    return found


_RULES_BY_CLASS: Final[dict[tuple[str, str], dict[str, str]]] = {}
for (_framework, _class_name, _slot), _layout in LAYOUT_RULES.items():
    _RULES_BY_CLASS.setdefault((_framework, _class_name), {})[_slot] = _layout


def layout_transforms(view_a: RankView, view_b: RankView, a: int, b: int) -> dict[str, Transform]:
    """Transforms that bring B's parameters into A's layout where both layouts are known and differ."""
    layouts_a, layouts_b = layouts(view_a, a), layouts(view_b, b)
    return {slot: TRANSPOSE for slot, layout in sorted(layouts_a.items()) if layouts_b.get(slot, layout) != layout}
