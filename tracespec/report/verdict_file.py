"""Read a verdict document from a file, as untrusted input.

Constraints: a bounded read (a verdict is metadata, not data), JSON only, validated against the
verdict schema; every problem is a :class:`~tracespec.errors.TracespecError` with one clear line.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Final

from tracespec.compare.verdict import validate_verdict
from tracespec.errors import InputFileError

__all__ = ["MAX_VERDICT_BYTES", "load_verdict"]

MAX_VERDICT_BYTES: Final = 512 << 20


def load_verdict(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The verdict document in ``path`` (what ``tracespec diff --json`` writes), validated."""
    source = Path(path)
    try:
        size = source.stat().st_size
        if size > MAX_VERDICT_BYTES:
            raise InputFileError(f"{source}: {size} bytes is too large for a verdict document")
        doc = json.loads(source.read_bytes())
    except FileNotFoundError:
        raise InputFileError(f"{source}: no such file; write one with tracespec diff A B --json {source}") from None
    except OSError as exc:
        raise InputFileError(f"{source}: cannot read ({exc.strerror})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputFileError(f"{source}: not a JSON verdict document ({exc})") from None
    if not isinstance(doc, dict):
        raise InputFileError(f"{source}: not a verdict document (a JSON object is expected)")
    validate_verdict(doc)
    return doc
