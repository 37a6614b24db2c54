"""The store interface. SQLite (store/sqlite.py) and PostgreSQL (store/postgres.py) implement it."""

from __future__ import annotations

import abc
from collections.abc import Iterable

from agbox.models import ApiKeyRecord, SessionRecord, SessionStatus


class Store(abc.ABC):
    @abc.abstractmethod
    def close(self) -> None: ...

    # ---- API keys
    @abc.abstractmethod
    def add_key(self, record: ApiKeyRecord) -> None: ...

    @abc.abstractmethod
    def key_by_hash(self, key_hash: str) -> ApiKeyRecord | None: ...

    @abc.abstractmethod
    def list_keys(self) -> list[ApiKeyRecord]: ...

    @abc.abstractmethod
    def revoke_key(self, key_id: str, when: float) -> bool: ...

    @abc.abstractmethod
    def key_by_id(self, key_id: str) -> ApiKeyRecord | None: ...

    @abc.abstractmethod
    def set_key_limits(self, key_id: str, limits: dict[str, float]) -> bool:
        """Replace the key's limit overrides; False if there is no such key."""

    # ---- sessions
    @abc.abstractmethod
    def put_session(self, record: SessionRecord) -> None:
        """Insert or replace the whole record."""

    @abc.abstractmethod
    def get_session(self, session_id: str) -> SessionRecord | None: ...

    @abc.abstractmethod
    def sessions(self, owner: str | None = None, statuses: Iterable[SessionStatus] | None = None) -> list[SessionRecord]:
        """Sessions ordered by creation time (oldest first)."""

    def session_images(self, statuses: Iterable[SessionStatus]) -> list[tuple[str, str]]:
        """(owner, image id) of each session in ``statuses``: what a create's limit checks need, without
        decoding whole records (stores override it with a narrow query)."""
        return [(r.owner, r.image_id) for r in self.sessions(statuses=statuses)]

    @abc.abstractmethod
    def touch_session(self, session_id: str, when: float) -> None: ...

    @abc.abstractmethod
    def set_status(self, session_id: str, status: SessionStatus, when: float | None = None, reason: str = "") -> None: ...

    @abc.abstractmethod
    def set_labels(self, session_id: str, labels: dict[str, str]) -> None: ...

    @abc.abstractmethod
    def claim_release(self, session_id: str, reason: str = "") -> bool:
        """Move an active session to DELETING with its finish reason (so calls in the meantime can say
        why it ended); True for the one caller (of any replica) that did it."""
