"""The options of ``tracespec.record`` (``docs/recording.md``): parsed and checked once, into a
:class:`RecordOptions` every adapter reads."""

from __future__ import annotations

import dataclasses
import difflib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from tracespec.errors import UsageError
from tracespec.format.tables import LEVELS, ROLES

__all__ = ["PUBLISH_MODES", "ROLE_GROUPS", "RecordOptions", "Selector", "parse_options"]


Selector = str | type
"""A route glob (``"blocks.*"``), a class name (``"Linear"``) or a class object (``nn.Dropout``)."""

ROLE_GROUPS: Final[dict[str, frozenset[str]]] = {
    "inputs": frozenset({"input"}),
    "outputs": frozenset({"output"}),
    "grads": frozenset({"grad_output", "grad_input", "parameter_grad"}),
    "params": frozenset({"parameter", "buffer"}),
    "optimizer": frozenset({"optimizer_state"}),
}
"""Names a user may give in ``roles=`` besides the spec roles themselves."""

_LEVEL_ORDER: Final = {"hash": 0, "stats": 1, "full": 2}

PUBLISH_MODES: Final = ("step", "async")
"""``publish="step"``: a step is durable when ``rec.step()`` returns; ``"async"``: one step later."""


@dataclass(frozen=True, slots=True)
class RecordOptions:
    """The validated options of :func:`tracespec.record` (see ``docs/recording.md``)."""

    capture: str = "stats"
    levels: tuple[tuple[Selector, str], ...] = ()
    include: tuple[Selector, ...] | None = None
    exclude: tuple[Selector, ...] = ()
    roles: frozenset[str] = frozenset(ROLES)
    every: int = 1
    steps: frozenset[int] | None = None
    max_bytes: int | None = None
    optimizer: Any = None
    metadata: dict[str, Any] = field(default_factory=dict)
    overwrite: bool = False
    rank: int | None = None
    world_size: int | None = None
    compression: str | None = None
    durable: bool = True
    ops: tuple[Selector, ...] | None = None
    publish: str = "step"
    stop_on_nonfinite: bool = False
    storage_options: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        """The capture options as recorded in the manifest's ``capture`` object."""
        return {
            "level": self.capture,
            "levels": [[_selector_text(s), level] for s, level in self.levels],
            "include": None if self.include is None else [_selector_text(s) for s in self.include],
            "exclude": [_selector_text(s) for s in self.exclude],
            "roles": sorted(self.roles),
            "every": self.every,
            "steps": None if self.steps is None else sorted(self.steps),
            "max_bytes": self.max_bytes,
            "optimizer": None if self.optimizer is None else type(self.optimizer).__name__,
            "ops": None if self.ops is None else [_selector_text(s) for s in self.ops],
        }


def _selector_text(selector: Selector) -> str:
    if isinstance(selector, type):
        return f"{selector.__module__}.{selector.__qualname__}"
    return selector


def _check_level(level: object, where: str) -> str:
    if level not in LEVELS:
        raise UsageError(f"{where} is {level!r}; expected one of {', '.join(map(repr, LEVELS))}")
    return str(level)


def _check_selectors(value: object, name: str) -> tuple[Selector, ...]:
    items = (value,) if isinstance(value, (str, type)) else value
    if not isinstance(items, Iterable):
        raise UsageError(f"{name} must be a route glob, a class or a list of them, not {type(value).__name__}")
    result = tuple(items)
    for item in result:
        if not isinstance(item, (str, type)):
            raise UsageError(
                f"{name} holds {item!r}; each entry is a route glob ('blocks.*'), a class name ('Linear') or a class object"
            )
    return result


def _parse_roles(value: object) -> frozenset[str]:
    items = (value,) if isinstance(value, str) else value
    if not isinstance(items, Iterable):
        raise UsageError(f"roles must be a list of role names, not {type(value).__name__}")
    roles: set[str] = set()
    for item in items:
        if item in ROLE_GROUPS:
            roles |= ROLE_GROUPS[item]
        elif item in ROLES:
            roles.add(item)
        else:
            known = sorted(ROLE_GROUPS) + list(ROLES)
            raise UsageError(f"roles holds {item!r}; known roles: {', '.join(known)}")
    return frozenset(roles)


def _check_int(value: object, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UsageError(f"{name} must be an integer >= {minimum}, not {value!r}")
    return value


_OPTION_NAMES: Final = tuple(f.name for f in dataclasses.fields(RecordOptions))


def parse_options(**options: Any) -> RecordOptions:
    """Validate the keyword options of :func:`tracespec.record`.

    Raises :class:`tracespec.errors.UsageError` naming the option, what was found and what is
    allowed; an unknown option name suggests the closest known one.
    """
    for name in options:
        if name not in _OPTION_NAMES:
            close = difflib.get_close_matches(name, _OPTION_NAMES, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise UsageError(f"record() got an unknown option {name!r}{hint} Options: {', '.join(_OPTION_NAMES)}")
    values: dict[str, Any] = {}
    capture = options.get("capture", "stats")
    values["capture"] = _check_level(capture, "capture")
    levels = options.get("levels") or {}
    if not isinstance(levels, Mapping):
        raise UsageError("levels must be a mapping {selector or role: level}, e.g. {'blocks.0.*': 'full'}")
    for key, level in levels.items():
        _check_selectors(key, "levels")
        _check_level(level, f"levels[{_selector_text(key)!r}]")
    values["levels"] = tuple(levels.items())
    if options.get("include") is not None:
        values["include"] = _check_selectors(options["include"], "include")
    if options.get("exclude") is not None:
        values["exclude"] = _check_selectors(options["exclude"], "exclude")
    if options.get("roles") is not None:
        values["roles"] = _parse_roles(options["roles"])
    values["every"] = _check_int(options.get("every", 1), "every", 1)
    if options.get("steps") is not None:
        steps = options["steps"]
        if not isinstance(steps, Iterable) or isinstance(steps, (str, bytes)):
            raise UsageError(f"steps must be the step numbers to record (a list or range), not {type(steps).__name__}")
        values["steps"] = frozenset(_check_int(step, "each of steps", 0) for step in steps)
        if "every" in options:
            raise UsageError("give steps or every, not both")
    if options.get("max_bytes") is not None:
        values["max_bytes"] = _check_int(options["max_bytes"], "max_bytes", 0)
    metadata = options.get("metadata") or {}
    if not isinstance(metadata, Mapping):
        raise UsageError(f"metadata must be a dict, not {type(metadata).__name__}")
    try:
        json.dumps(dict(metadata))
    except (TypeError, ValueError) as exc:
        raise UsageError(f"metadata must be JSON-serialisable: {exc}") from None
    values["metadata"] = dict(metadata)
    for name in ("rank", "world_size"):
        if options.get(name) is not None:
            values[name] = _check_int(options[name], name, 0 if name == "rank" else 1)
    if (values.get("rank") is None) != (values.get("world_size") is None):
        raise UsageError("give rank and world_size together (or neither, to detect them)")
    if options.get("compression") not in (None, "zstd"):
        raise UsageError(f"compression is {options['compression']!r}; expected None or 'zstd'")
    for name in ("optimizer", "compression"):
        if options.get(name) is not None:
            values[name] = options[name]
    for name in ("overwrite", "durable", "stop_on_nonfinite"):
        if name in options:
            values[name] = bool(options[name])
    ops = options.get("ops")
    if ops is True:
        values["ops"] = ("*",)
    elif ops not in (None, False):
        values["ops"] = _check_selectors(ops, "ops")
    publish = options.get("publish", "step")
    if publish not in PUBLISH_MODES:
        raise UsageError(f"publish is {publish!r}; expected 'step' (durable at each rec.step(), the default) or 'async'")
    values["publish"] = publish
    storage_options = options.get("storage_options")
    if storage_options is not None:
        if not isinstance(storage_options, Mapping):
            raise UsageError(
                f"storage_options must be a dict of the URL's file-system options, not {type(storage_options).__name__}"
            )
        values["storage_options"] = dict(storage_options)
    if values.get("stop_on_nonfinite") and values["capture"] == "hash":
        raise UsageError(
            "stop_on_nonfinite=True needs statistics to see NaN and Inf, and capture='hash' keeps none; "
            "use capture='stats' (cheap) or 'full'"
        )
    return RecordOptions(**values)
