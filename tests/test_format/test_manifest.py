"""Manifest parsing: versions, schemas and the errors a reader reports."""

from __future__ import annotations

import json

import pytest

from tracespec.errors import ManifestInvalidError, ManifestUnreadableError, UnsupportedVersionError
from tracespec.format.manifest import Manifest, PartManifest, Segment, parse_manifest, parse_part_manifest


def manifest_doc(**changes: object) -> dict[str, object]:
    doc = Manifest(
        framework="torch", framework_version="2.13", created="2026-01-01T00:00:00Z", producer_version="0.1.0"
    ).to_json()
    doc.update(changes)
    return doc


def encode(doc: dict[str, object]) -> bytes:
    return json.dumps(doc).encode()


def test_manifest_roundtrips() -> None:
    doc = manifest_doc(metadata={"git": "abc"}, world_size=4)
    assert parse_manifest(encode(doc)).to_json() == doc


def test_part_manifest_roundtrips() -> None:
    part = PartManifest(
        rank=2,
        device="cuda:2",
        complete=False,
        steps=(0, 1),
        tables={"nodes": (Segment("tables/nodes-000000.arrow", 3),), "calls": (), "tensors": ()},
        store_path="tensors.zarr",
        store_arrays=0,
        store_bytes=0,
        updated="now",
    )
    assert parse_part_manifest(encode(part.to_json())) == part


def test_a_newer_minor_version_with_extra_fields_is_read() -> None:
    doc = manifest_doc(format_version="1.7", some_future_field=[1, 2])
    assert parse_manifest(encode(doc)).format_version == "1.7"


@pytest.mark.parametrize(
    ("raw", "error", "match"),
    [
        (b'{"format": "tracespec", "format_v', ManifestUnreadableError, "not valid JSON"),
        (b"\xff\xfe garbage", ManifestUnreadableError, "not valid JSON"),
        (b"[1, 2]", ManifestUnreadableError, "JSON object"),
        (encode(manifest_doc(format="zarr")), ManifestInvalidError, "'format'"),
        (encode(manifest_doc(format_version="one")), ManifestInvalidError, "MAJOR.MINOR"),
        (encode(manifest_doc(format_version="2.0")), UnsupportedVersionError, "Upgrade tracespec"),
        (encode(manifest_doc(format_version="0.9")), UnsupportedVersionError, "supports 1.x"),
        (encode(manifest_doc(world_size=0)), ManifestInvalidError, "world_size"),
        (encode({k: v for k, v in manifest_doc().items() if k != "framework"}), ManifestInvalidError, "framework"),
    ],
)
def test_bad_manifests_name_the_problem(raw: bytes, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        parse_manifest(raw, "t/manifest.json")


def test_unknown_major_is_reported_even_when_fields_changed() -> None:
    with pytest.raises(UnsupportedVersionError):
        parse_manifest(encode({"format": "tracespec", "format_version": "3.0", "everything": "different"}))
