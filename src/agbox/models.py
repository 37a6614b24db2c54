"""Domain records shared by the store and the services (no wire or web concerns)."""

from __future__ import annotations

import dataclasses
import enum
from typing import Any


class SessionStatus(str, enum.Enum):
    # The wire strings the official SDK and its tests know.
    CREATING = "CREATING"
    RUNNING = "RUNNING"
    DELETING = "DELETING"
    FINISH = "FINISH"


ACTIVE_STATUSES = (SessionStatus.CREATING, SessionStatus.RUNNING)


@dataclasses.dataclass
class SessionRecord:
    id: str
    owner: str
    image_id: str
    status: SessionStatus
    labels: dict[str, str]
    created_at: float
    last_active_at: float
    idle_timeout_s: int
    expires_at: float
    token: str
    node: str = ""
    handle: dict[str, Any] = dataclasses.field(default_factory=dict)
    policy_id: str = ""
    finished_at: float | None = None
    finish_reason: str = ""


@dataclasses.dataclass
class ApiKeyRecord:
    id: str
    name: str
    key_hash: str
    prefix: str
    created_at: float
    revoked_at: float | None = None
    # Per-key overrides of the server's per-key limits (services/limits.py LIMIT_NAMES -> number).
    limits: dict[str, float] = dataclasses.field(default_factory=dict)
