"""Where the converter tests find the PaDiff corpus: relative to the repository, failing loudly."""

from __future__ import annotations

from pathlib import Path

import pytest

CORPUS = (Path(__file__).resolve().parents[2] / ".." / "shared" / "corpus" / "padiff").resolve()


def corpus_dir() -> Path:
    """The PaDiff corpus; a missing corpus fails the run loudly instead of skipping tests."""
    if not (CORPUS / "FORMAT.md").is_file():
        pytest.fail(f"the PaDiff corpus is missing at {CORPUS}; these tests need ../shared/corpus/padiff next to the repository")
    return CORPUS


def model_dumps() -> list[Path]:
    """Every ``<case>/padiff_dump/<model>`` and ``<case>/post_step_weights/<model>`` folder."""
    if not (CORPUS / "FORMAT.md").is_file():
        return [CORPUS / "missing-corpus" / "case" / "model"]  # collected, then fails in corpus_dir()
    return sorted([*CORPUS.glob("*/padiff_dump/*"), *CORPUS.glob("*/post_step_weights/*")])
