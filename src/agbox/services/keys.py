"""API keys: stored hashed; a key is shown once, when made."""

from __future__ import annotations

import hashlib
import secrets
import time

from agbox.errors import AuthenticationError
from agbox.models import ApiKeyRecord
from agbox.store.base import Store

KEY_PREFIX = "agbox_"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class KeyService:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._cache: dict[str, str] = {}

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
        digest = hash_key(key)
        cached = self._cache.get(digest)
        if cached is not None:
            return cached
        record = self.store.key_by_hash(digest)
        if record is None or record.revoked_at is not None:
            raise AuthenticationError("invalid or revoked API key")
        self._cache[digest] = record.id
        return record.id

    def list(self) -> list[ApiKeyRecord]:
        return self.store.list_keys()

    def revoke(self, key_id: str) -> bool:
        self._cache.clear()
        return self.store.revoke_key(key_id, time.time())
