"""Session-wide fixtures of the comparison tests."""

from __future__ import annotations

import pytest

from test_compare.real_ports.corpus import Corpus


@pytest.fixture(scope="session")
def real_ports(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    """The real-port corpus (tests/test_compare/real_ports): each trace recorded once per session."""
    return Corpus(tmp_path_factory)
