"""Signed URL tokens: ``<base64url JSON claims>.<HMAC-SHA256 hex>`` under a secret kept in the data dir.

Pre-signed context-object URLs carry such a token, so a plain HTTP client can PUT or GET one object
without an API key; the claims say which object, which method and until when.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
from pathlib import Path
from typing import Any

from agbox.errors import AgboxError
from agbox.wirejson import same_secret


def load_secret(path: Path) -> bytes:
    """The secret at ``path``, made (32 random bytes, mode 0600) on first use."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    secret = secrets.token_bytes(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(secret)
    return secret


def sign(secret: bytes, claims: dict[str, Any]) -> str:
    body = base64.urlsafe_b64encode(json.dumps(claims, separators=(",", ":")).encode()).decode().rstrip("=")
    return f"{body}.{hmac.new(secret, body.encode(), hashlib.sha256).hexdigest()}"


def verify(secret: bytes, token: str) -> dict[str, Any]:
    """The claims of a token signed with ``secret``; ``AgboxError`` for anything else."""
    body, _, signature = token.partition(".")
    expected = hmac.new(secret, body.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()
    if not same_secret(signature, expected):  # any text, also non-ASCII, is simply a wrong signature
        raise AgboxError("bad signature")
    try:
        claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    except ValueError as exc:  # cannot happen for a token we signed; kept for a leaked secret
        raise AgboxError("malformed token") from exc
    if not isinstance(claims, dict):
        raise AgboxError("malformed token")
    return claims
