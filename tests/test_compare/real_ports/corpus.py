"""The traces of the corpus, each recorded at most once per test session, on first use."""

from __future__ import annotations

from pathlib import Path

import pytest

from test_compare.real_ports import build


class Corpus:
    """Records the reference of each architecture and each (architecture, port, bug) when first asked."""

    def __init__(self, factory: pytest.TempPathFactory) -> None:
        self._factory = factory
        self._traces: dict[tuple[str, str, str | None], Path] = {}

    def reference(self, architecture: str) -> Path:
        key = (architecture, "torch", None)
        if key not in self._traces:
            self._traces[key] = build.record_reference(architecture, self._factory.mktemp(architecture) / "torch")
        return self._traces[key]

    def port(self, architecture: str, port: str, bug: str | None = None) -> Path:
        key = (architecture, port, bug)
        if key not in self._traces:
            folder = self._factory.mktemp(f"{architecture}_{port}_{bug or 'correct'}")
            self._traces[key] = build.record_port(architecture, port, folder, bug)
        return self._traces[key]
