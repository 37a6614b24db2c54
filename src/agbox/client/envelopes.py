"""Reading AGB envelopes in the SDK's context modules: did it succeed, and what went wrong."""

from __future__ import annotations

from typing import Any


def error_of(response: dict[str, Any], fallback: str = "Unknown error") -> str:
    return str(response.get("message") or response.get("code") or fallback)


def succeeded(response: dict[str, Any]) -> bool:
    return bool(response.get("success")) and int(response.get("httpStatusCode") or 200) == 200
