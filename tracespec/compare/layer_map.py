"""Layer maps: the user's word on which node of B computes what a node of A computes.

Constraints: a layer map is untrusted input (a YAML or JSON file): every key and value is checked,
every error is one :class:`~tracespec.errors.InputFileError` saying where and what to write instead.
No framework import. The format is documented in ``docs/diff.md`` ("Layer maps").
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np

from tracespec.compare.view import Record
from tracespec.errors import InputFileError

__all__ = [
    "TRANSPOSE",
    "CallRule",
    "LayerMap",
    "Transform",
    "layer_map_document",
    "load_layer_map",
    "parse_layer_map",
    "transform_for",
]

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
            route = route[len(self.strip) :] if route.startswith(self.strip) else ""
        for old, new in self.replace:
            if route.startswith(old):
                route = new + route[len(old) :]
                break
        return route


CallName = tuple[str, int]
"""A call named in a layer map: (route, call index); ``"blocks.0.act#1"`` is ``("blocks.0.act", 1)``."""


@dataclass(frozen=True, slots=True)
class CallRule:
    """A map entry that pairs calls, not routes: one call with one call (a shared module's second
    call with another module), or consecutive calls with consecutive calls (a fused group compared
    at its boundary). Routes are exact; ``#k`` names the k-th call (``#0`` when left out)."""

    a: tuple[CallName, ...]
    b: tuple[CallName, ...]
    transforms: dict[str, Transform]


@dataclass(frozen=True, slots=True)
class LayerMap:
    """A parsed layer map (see ``docs/diff.md``, "Layer maps"). The empty map changes nothing."""

    prefixes_a: _Prefixes = _Prefixes()
    prefixes_b: _Prefixes = _Prefixes()
    rules: tuple[_Rule, ...] = ()
    ignore_a: tuple[_Pattern, ...] = ()
    ignore_b: tuple[_Pattern, ...] = ()
    source: str | None = None
    call_rules: tuple[CallRule, ...] = ()

    def to_json(self) -> dict[str, Any] | None:
        if self.source is None and not self.rules and not self.call_rules and not self.ignore_a and not self.ignore_b:
            return None
        return {"source": self.source, "rules": len(self.rules) + len(self.call_rules)}


_MAP_KEYS: Final = {"version", "a", "b", "map", "ignore"}


def _expect(value: object, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise InputFileError(f"{where}: expected {names}, found {type(value).__name__} {value!r}")
    return value


def _parse_prefixes(doc: object, where: str) -> _Prefixes:
    if doc is None:
        return _Prefixes()
    fields: dict[str, Any] = _expect(doc, dict, where)
    unknown = set(fields) - {"strip_prefix", "replace_prefix"}
    if unknown:
        raise InputFileError(f"{where}: unknown keys {sorted(unknown)}; use strip_prefix, replace_prefix")
    strip = _expect(fields.get("strip_prefix", ""), str, f"{where}.strip_prefix")
    replace = _expect(fields.get("replace_prefix", {}), dict, f"{where}.replace_prefix")
    pairs = tuple((_expect(k, str, where), _expect(v, str, where)) for k, v in replace.items())
    return _Prefixes(strip, pairs)


def parse_layer_map(doc: object, source: str = "<layer map>") -> LayerMap:
    """Validate a layer-map document (the parsed YAML/JSON) and compile it."""
    fields: dict[str, Any] = _expect(doc, dict, source)
    unknown = set(fields) - _MAP_KEYS
    if unknown:
        raise InputFileError(f"{source}: unknown keys {sorted(unknown)}; a layer map has {sorted(_MAP_KEYS)}")
    version = fields.get("version", 1)
    if version != 1:
        raise InputFileError(f"{source}: layer map version {version!r}; this tracespec reads version 1")
    rules = []
    call_rules = []
    for i, entry in enumerate(_expect(fields.get("map", []), list, f"{source}: map")):
        where = f"{source}: map[{i}]"
        entry = _expect(entry, dict, where)
        if set(entry) - {"a", "b", "transforms"} or "a" not in entry or "b" not in entry:
            raise InputFileError(f"{where}: an entry has 'a', 'b' and optionally 'transforms', found {sorted(entry)}")
        transforms = {
            _expect(slot, str, where): _parse_transform(spec, f"{where}.transforms.{slot}")
            for slot, spec in _expect(entry.get("transforms", {}), dict, f"{where}.transforms").items()
        }
        if _names_calls(entry["a"]) or _names_calls(entry["b"]):
            call_rules.append(
                CallRule(_parse_calls(entry["a"], f"{where}.a"), _parse_calls(entry["b"], f"{where}.b"), transforms)
            )
            continue
        try:
            pattern = _compile(_expect(entry["a"], str, f"{where}.a"))
        except re.error as exc:
            raise InputFileError(f"{where}.a: invalid regular expression ({exc})") from None
        rules.append(_Rule(pattern, _expect(entry["b"], str, f"{where}.b"), transforms))
    ignore = _expect(fields.get("ignore", {}), dict, f"{source}: ignore")
    ignored = {
        side: tuple(
            _compile(_expect(p, str, f"{source}: ignore.{side}"))
            for p in _expect(ignore.get(side, []), list, f"{source}: ignore.{side}")
        )
        for side in ("a", "b")
    }
    return LayerMap(
        _parse_prefixes(fields.get("a"), f"{source}: a"),
        _parse_prefixes(fields.get("b"), f"{source}: b"),
        tuple(rules),
        ignored["a"],
        ignored["b"],
        source,
        tuple(call_rules),
    )


_CALL_SUFFIX: Final = re.compile(r"^(.*)#(\d+)$")


def _names_calls(value: object) -> bool:
    """Does an entry side name calls (a list of routes, or a route with ``#k``) rather than a pattern?"""
    return isinstance(value, list) or (isinstance(value, str) and _CALL_SUFFIX.match(value) is not None)


def _parse_calls(value: object, where: str) -> tuple[CallName, ...]:
    items = value if isinstance(value, list) else [value]
    if not items:
        raise InputFileError(f"{where}: an empty list; name at least one route")
    calls = []
    for item in items:
        text = _expect(item, str, where)
        if any(c in text for c in "*?") or text.startswith("re:"):
            raise InputFileError(f"{where}: {text!r}: a list or a #call names exact routes, not patterns")
        found = _CALL_SUFFIX.match(text)
        calls.append((found.group(1), int(found.group(2))) if found else (text, 0))
    return tuple(calls)


def _call_text(name: CallName) -> str:
    return f"{name[0]}#{name[1]}" if name[1] else name[0]


def layer_map_document(
    node_pairs: list[tuple[str, str]],
    call_pairs: list[tuple[list[CallName], list[CallName]]],
    notes: list[str],
    keep: LayerMap | None = None,
) -> str:
    """A layer map, as YAML text, that pins an alignment: ``node_pairs`` as route entries, ``call_pairs``
    as call entries (one call, or a group as a list), ``notes`` as comments for the reader; the prefix
    rules of ``keep`` are written too (the routes given are after them)."""
    import yaml  # only needed to write maps

    doc: dict[str, Any] = {"version": 1}
    for side, prefixes in (("a", keep.prefixes_a if keep else _Prefixes()), ("b", keep.prefixes_b if keep else _Prefixes())):
        section: dict[str, Any] = {}
        if prefixes.strip:
            section["strip_prefix"] = prefixes.strip
        if prefixes.replace:
            section["replace_prefix"] = dict(prefixes.replace)
        if section:
            doc[side] = section
    entries: list[dict[str, Any]] = [{"a": a, "b": b} for a, b in node_pairs]
    for calls_a, calls_b in call_pairs:
        side_a: Any = (
            [_call_text(c) for c in calls_a] if len(calls_a) > 1 else _call_text(calls_a[0]) + ("" if calls_a[0][1] else "#0")
        )
        side_b: Any = (
            [_call_text(c) for c in calls_b] if len(calls_b) > 1 else _call_text(calls_b[0]) + ("" if calls_b[0][1] else "#0")
        )
        entries.append({"a": side_a, "b": side_b})
    doc["map"] = entries
    body: str = yaml.safe_dump(doc, sort_keys=False, default_flow_style=None, width=120)
    return "".join(f"# {line}\n" for line in notes) + body


def load_layer_map(path: str | os.PathLike[str]) -> LayerMap:
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
