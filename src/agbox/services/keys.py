"""API keys: stored hashed; a key is shown once, when made.

Revocation: a server keeps what it learned about a key for at most ``ttl_s`` (1 s by default) before
it asks the store again, so ``agbox keys revoke`` (another process, or another replica on the same
store) takes effect everywhere within about a second without a lookup on every request. Sessions of
a revoked key are released by the lifecycle sweep (``SessionService.sweep``).
"""

from __future__ import annotations

import hashlib
import secrets
import time

from agbox.errors import AuthenticationError
from agbox.models import ApiKeyRecord
from agbox.store.base import Store

KEY_PREFIX = "agbox_"


def hash_key(key: str | bytes) -> str:
    return hashlib.sha256(key.encode() if isinstance(key, str) else key).hexdigest()


class KeyService:
    def __init__(self, store: Store, ttl_s: float = 1.0) -> None:
        self.store = store
        self.ttl_s = ttl_s
        # key hash -> (key id, monotonic time it was last confirmed active in the store)
        self._cache: dict[str, tuple[str, float]] = {}

    def create(self, name: str = "default", key: str | None = None) -> tuple[ApiKeyRecord, str]:
        key = key or KEY_PREFIX + secrets.token_urlsafe(24)
        existing = self.store.key_by_hash(hash_key(key))
        if existing is not None and existing.revoked_at is None:
            return existing, key
        record = ApiKeyRecord(id="key-" + secrets.token_hex(6), name=name, key_hash=hash_key(key),
                              prefix=key[:10], created_at=time.time())
        self.store.add_key(record)
        return record, key

    def authenticate(self, key: str | None) -> str:
        """The owning key id for a presented key, or AuthenticationError."""
        if not key:
            raise AuthenticationError("missing API key: send 'Authorization: Bearer <key>'")
        digest = hash_key(key.encode("utf-8", "surrogatepass"))
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached is not None and now - cached[1] < self.ttl_s:
            return cached[0]
        record = self.store.key_by_hash(digest)
        if record is None or record.revoked_at is not None:
            self._cache.pop(digest, None)
            raise AuthenticationError("invalid or revoked API key")
        if len(self._cache) > 10_000:  # bounded: many keys seen once must not grow it forever
            self._cache.clear()
        self._cache[digest] = (record.id, now)
        return record.id

    def revoked_ids(self) -> set[str]:
        return {record.id for record in self.store.list_keys() if record.revoked_at is not None}

    def list(self) -> list[ApiKeyRecord]:
        return self.store.list_keys()

    def set_limits(self, key_id: str, changes: dict[str, float | None]) -> dict[str, float] | None:
        """Merge limit overrides into a key's (None drops an override); the new overrides, or None if
        there is no such key."""
        record = self.store.key_by_id(key_id)
        if record is None:
            return None
        limits = dict(record.limits)
        for name, value in changes.items():
            if value is None:
                limits.pop(name, None)
            else:
                limits[name] = value
        self.store.set_key_limits(key_id, limits)
        return limits

    def revoke(self, key_id: str) -> bool:
        self._cache.clear()
        return self.store.revoke_key(key_id, time.time())
