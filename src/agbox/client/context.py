"""Contexts (persistent data). Filled in by the contexts feature; until then a no-op attachment."""

from __future__ import annotations

from typing import Any


def attach_agb(agb: Any) -> None:
    return None
