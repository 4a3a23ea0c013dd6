"""Limits every reader enforces before allocating anything (spec section 13 item 3)."""

from __future__ import annotations

from typing import Final

__all__ = ["MAX_ARRAY_BYTES", "MAX_CHUNKS"]

MAX_ARRAY_BYTES: Final = 1 << 40
"""A tensor larger than this (1 TiB) is an absurd shape (``invalid_shape``)."""

MAX_CHUNKS: Final = 1 << 20
"""An array cut into more chunks than this is an absurd chunk grid (``invalid_shape``)."""
