"""Where the converter tests find the PaDiff corpus: a copy of ``../shared/corpus/padiff`` shipped
with the tests (4.9 MB), so a bare clone of the repository runs them; failing loudly if absent."""

from __future__ import annotations

from pathlib import Path

import pytest

CORPUS = Path(__file__).resolve().parents[1] / "data" / "padiff_corpus"


def corpus_dir() -> Path:
    """The PaDiff corpus; a missing corpus fails the run loudly instead of skipping tests."""
    if not (CORPUS / "FORMAT.md").is_file():
        pytest.fail(f"the PaDiff corpus is missing at {CORPUS}; copy ../shared/corpus/padiff there")
    return CORPUS


def model_dumps() -> list[Path]:
    """Every ``<case>/padiff_dump/<model>`` and ``<case>/post_step_weights/<model>`` folder."""
    if not (CORPUS / "FORMAT.md").is_file():
        return [CORPUS / "missing-corpus" / "case" / "model"]  # collected, then fails in corpus_dir()
    return sorted([*CORPUS.glob("*/padiff_dump/*"), *CORPUS.glob("*/post_step_weights/*")])
