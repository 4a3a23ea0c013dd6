"""The trace manifest and the part manifests, as typed values (spec sections "Manifest", "Parts").

Parsing checks, in this order: the JSON is readable, the format name is right, the major
version is one this reader knows (so a future trace gets ``unsupported_major_version`` even when
its fields changed), then the JSON Schema in ``spec/v1/schema/``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any, Final

import jsonschema

from tracespec.errors import (
    ManifestInvalidError,
    ManifestUnreadableError,
    UnsupportedVersionError,
)

__all__ = [
    "ENDINGS",
    "FORMAT_MAJOR",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "MANIFEST_FILE",
    "PART_FILE",
    "PART_FORMAT_NAME",
    "Ending",
    "Manifest",
    "PartManifest",
    "Segment",
    "parse_json_document",
    "parse_manifest",
    "parse_part_manifest",
    "part_dir_name",
]

FORMAT_NAME: Final = "tracespec"
PART_FORMAT_NAME: Final = "tracespec-part"
FORMAT_VERSION: Final = "1.1"
FORMAT_MAJOR: Final = 1
MANIFEST_FILE: Final = "manifest.json"
PART_FILE: Final = "part.json"
STORE_DIR: Final = "tensors.zarr"
ENDINGS: Final = ("closed", "exception", "signal")
_DETAIL_LIMIT: Final = 200
"""How a writer ended (spec section 11): closed cleanly, or stopped by an exception or a signal."""


def part_dir_name(rank: int) -> str:
    """The folder of one rank's part: ``rank_<R>`` with R in decimal, no padding."""
    return f"rank_{rank}"


@dataclass(frozen=True, slots=True)
class Manifest:
    """``manifest.json``: what the trace is, written once by whichever rank starts first."""

    framework: str
    framework_version: str | None
    created: str
    world_size: int = 1
    capture: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    dtype_policy: str | None = None
    source: dict[str, Any] | None = None
    producer: str = "tracespec"
    producer_version: str = ""
    format_version: str = FORMAT_VERSION

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT_NAME,
            "format_version": self.format_version,
            "producer": {"name": self.producer, "version": self.producer_version},
            "framework": {"name": self.framework, "version": self.framework_version},
            "created": self.created,
            "world_size": self.world_size,
            "dtype_policy": self.dtype_policy,
            "capture": self.capture,
            "source": self.source,
            "metadata": self.metadata,
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Manifest:
        return cls(
            framework=doc["framework"]["name"],
            framework_version=doc["framework"]["version"],
            created=doc["created"],
            world_size=doc["world_size"],
            capture=doc["capture"],
            metadata=doc["metadata"],
            dtype_policy=doc.get("dtype_policy"),
            source=doc.get("source"),
            producer=doc["producer"]["name"],
            producer_version=doc["producer"]["version"],
            format_version=doc["format_version"],
        )


@dataclass(frozen=True, slots=True)
class Segment:
    """One Arrow IPC file of a table, and how many rows it holds."""

    path: str
    rows: int


@dataclass(frozen=True, slots=True)
class Ending:
    """``part.json``'s ``ending``: how the writer of the part ended (spec section 11).

    ``how`` is one of :data:`ENDINGS`; ``detail`` names the exception (``"ValueError: ..."``) or
    the signal (``"SIGTERM"``); ``step`` is the step in progress when it happened.
    """

    how: str
    detail: str | None = None
    step: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {"how": self.how, "detail": self.detail, "step": self.step}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Ending:
        return cls(how=doc["how"], detail=doc.get("detail"), step=doc.get("step"))

    @classmethod
    def of_exception(cls, exc: BaseException, step: int | None) -> Ending:
        """The ending of a writer stopped by ``exc``: its type and message, one line, short."""
        text = " ".join(f"{type(exc).__name__}: {exc}".split())
        return cls("exception", text if len(text) <= _DETAIL_LIMIT else text[: _DETAIL_LIMIT - 3] + "...", step)


@dataclass(frozen=True, slots=True)
class PartManifest:
    """``rank_<R>/part.json``: one rank's tables and tensor store, rewritten at every flush."""

    rank: int
    device: str
    complete: bool
    steps: tuple[int, ...]
    tables: dict[str, tuple[Segment, ...]]
    store_path: str
    store_arrays: int
    store_bytes: int
    updated: str
    format_version: str = FORMAT_VERSION
    partial_steps: tuple[int, ...] = ()
    ending: Ending | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "format": PART_FORMAT_NAME,
            "format_version": self.format_version,
            "rank": self.rank,
            "device": self.device,
            "complete": self.complete,
            "steps": list(self.steps),
            "tables": {name: [{"path": s.path, "rows": s.rows} for s in segments] for name, segments in self.tables.items()},
            "store": {"path": self.store_path, "arrays": self.store_arrays, "bytes": self.store_bytes},
            "updated": self.updated,
            "partial_steps": list(self.partial_steps),
            "ending": None if self.ending is None else self.ending.to_json(),
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> PartManifest:
        return cls(
            rank=doc["rank"],
            device=doc["device"],
            complete=doc["complete"],
            steps=tuple(doc["steps"]),
            tables={name: tuple(Segment(s["path"], s["rows"]) for s in segments) for name, segments in doc["tables"].items()},
            store_path=doc["store"]["path"],
            store_arrays=doc["store"]["arrays"],
            store_bytes=doc["store"]["bytes"],
            updated=doc["updated"],
            format_version=doc["format_version"],
            partial_steps=tuple(doc.get("partial_steps", ())),
            ending=None if doc.get("ending") is None else Ending.from_json(doc["ending"]),
        )


@cache
def _schema(name: str) -> dict[str, Any]:
    text = resources.files("tracespec.schema").joinpath(name).read_text(encoding="utf-8")
    return json.loads(text)  # type: ignore[no-any-return]


def parse_json_document(raw: bytes, where: str) -> dict[str, Any]:
    """Decode a JSON object, or raise :class:`ManifestUnreadableError` naming ``where``."""
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestUnreadableError(f"{where}: not valid JSON ({exc}); the file is truncated or garbled") from None
    if not isinstance(doc, dict):
        raise ManifestUnreadableError(f"{where}: expected a JSON object, found {type(doc).__name__}")
    return doc


def _check_format(doc: dict[str, Any], expected_name: str, where: str) -> None:
    if doc.get("format") != expected_name:
        raise ManifestInvalidError(f"{where}: 'format' is {doc.get('format')!r}, expected {expected_name!r}")
    version = doc.get("format_version")
    if not isinstance(version, str) or not version.partition(".")[0].isdigit():
        raise ManifestInvalidError(f"{where}: 'format_version' is {version!r}, expected 'MAJOR.MINOR'")
    major = int(version.partition(".")[0])
    if major != FORMAT_MAJOR:
        raise UnsupportedVersionError(
            f"{where}: format_version is {version!r}; this reader supports {FORMAT_MAJOR}.x. "
            + ("Upgrade tracespec." if major > FORMAT_MAJOR else "Convert the trace with an older tracespec.")
        )


def _validate(doc: dict[str, Any], schema_file: str, where: str) -> None:
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(_schema(schema_file)).iter_errors(doc))
    if error is not None:
        location = "/".join(str(p) for p in error.absolute_path) or "(top level)"
        raise ManifestInvalidError(f"{where}: at {location}: {error.message}")


def parse_manifest(raw: bytes, where: str = MANIFEST_FILE) -> Manifest:
    """Parse and validate the bytes of ``manifest.json``."""
    doc = parse_json_document(raw, where)
    _check_format(doc, FORMAT_NAME, where)
    _validate(doc, "manifest.schema.json", where)
    return Manifest.from_json(doc)


def parse_part_manifest(raw: bytes, where: str = PART_FILE) -> PartManifest:
    """Parse and validate the bytes of a ``part.json``."""
    doc = parse_json_document(raw, where)
    _check_format(doc, PART_FORMAT_NAME, where)
    _validate(doc, "part.schema.json", where)
    return PartManifest.from_json(doc)
