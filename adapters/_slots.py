"""Slots: the names of the tensor leaves of a call's arguments and results (spec section "Slots"),
flattened the same way for every framework."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from typing import Any

__all__ = ["flatten", "input_leaves", "map_tensors"]


def flatten(value: Any, prefix: str, is_tensor: Callable[[Any], bool]) -> Iterator[tuple[str, Any]]:
    """Yield ``(slot, leaf)`` for every leaf of a nested tuple/list/dict/dataclass structure.

    ``prefix`` is the slot of ``value`` itself; nested entries append ``.index`` or ``.key``.
    An empty prefix means ``value`` is a top-level container whose entries are slots ``"0"``,
    ``"key"``... Tensors and non-container objects are leaves.
    """

    def join(key: object) -> str:
        return f"{prefix}.{key}" if prefix else str(key)

    if is_tensor(value):
        yield prefix or "0", value
    elif isinstance(value, (tuple, list)):
        for i, item in enumerate(value):
            yield from flatten(item, join(i), is_tensor)
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from flatten(item, join(key), is_tensor)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            yield from flatten(getattr(value, f.name), join(f.name), is_tensor)
    else:
        yield prefix or "0", value


def map_tensors(value: Any, fn: Callable[[str, Any], Any], prefix: str, is_tensor: Callable[[Any], bool]) -> Any:
    """Rebuild ``value`` with every tensor leaf ``t`` at slot ``s`` replaced by ``fn(s, t)``.

    Containers whose leaves are all unchanged are returned as the same object.
    """

    def join(key: object) -> str:
        return f"{prefix}.{key}" if prefix else str(key)

    if is_tensor(value):
        return fn(prefix or "0", value)
    if isinstance(value, (tuple, list)):
        items = [map_tensors(item, fn, join(i), is_tensor) for i, item in enumerate(value)]
        if all(a is b for a, b in zip(items, value)):
            return value
        if isinstance(value, tuple) and hasattr(value, "_fields"):  # namedtuple
            return type(value)(*items)
        return type(value)(items)
    if isinstance(value, dict):
        new = {key: map_tensors(item, fn, join(key), is_tensor) for key, item in value.items()}
        if all(new[k] is value[k] for k in value):
            return value
        rebuilt = value.copy()
        rebuilt.update(new)
        return rebuilt
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changes = {
            f.name: map_tensors(getattr(value, f.name), fn, join(f.name), is_tensor) for f in dataclasses.fields(value) if f.init
        }
        if all(changes[k] is getattr(value, k) for k in changes):
            return value
        return dataclasses.replace(value, **changes)
    return value


def input_leaves(args: tuple[Any, ...], kwargs: Mapping[str, Any], is_tensor: Callable[[Any], bool]) -> Iterator[tuple[str, Any]]:
    """The ``(slot, leaf)`` pairs of a call's inputs: positional argument ``i`` at slot ``"i"``,
    keyword ``k`` at ``"k"``, nested entries below them (see :func:`flatten`)."""
    for i, arg in enumerate(args):
        yield from flatten(arg, str(i), is_tensor)
    for key, arg in kwargs.items():
        yield from flatten(arg, str(key), is_tensor)
