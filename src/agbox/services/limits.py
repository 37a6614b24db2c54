"""Fair shares per API key: what one key may hold or do at once, so that one tenant (or one runaway
agent) cannot take the server from the others.

Each limit has a server-wide default in ``Settings`` (``None`` = no limit) and an optional override
per key, stored with the key (``agbox keys create/set --max-sessions ...``). A key at a limit gets a
clear error naming the limit; other keys are unaffected.

- sessions: active sessions (CREATING/RUNNING) of the key;
- memory, cpus: the sum of the image limits of the key's active sessions (what its sandboxes may use);
- context bytes: the total size of the files in the key's contexts;
- requests per second: a token bucket per key over API-key requests (wire operations), burst = one
  second's worth; over it the request gets HTTP 429 with ``Retry-After``. The bucket lives in this
  process (each replica counts its own requests);
- streams: open WebSocket streams (``wsUrl``) of the key's sessions.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from typing import Any

from agbox.errors import InvalidRequestError, QuotaExceededError, ThrottledError
from agbox.settings import Settings
from agbox.store.base import Store

# Limit names as stored with a key and as the CLI spells them (--max-sessions ...).
LIMIT_NAMES = ("max_sessions", "max_memory_bytes", "max_cpus", "max_context_bytes", "requests_per_s", "max_streams")
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


@dataclasses.dataclass(frozen=True)
class KeyLimits:
    max_sessions: int | None = None
    max_memory_bytes: int | None = None
    max_cpus: float | None = None
    max_context_bytes: int | None = None
    requests_per_s: float | None = None
    max_streams: int | None = None


def parse_limit(name: str, raw: str) -> float | None:
    """A limit as given on the command line: a number, a size with K/M/G/T for byte limits, or
    ``default`` (drop the key's override). Negative or non-finite values are refused."""
    text = raw.strip().lower()
    if text in ("default", ""):
        return None
    unit = 1
    if name.endswith("_bytes") and text[-1:] in _UNITS and text[-1:] != "":
        unit, text = _UNITS[text[-1]], text[:-1]
    try:
        value = float(text) * unit
    except ValueError:
        raise InvalidRequestError(f"{name}: {raw!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise InvalidRequestError(f"{name}: must be a finite number >= 0")
    return value


def settings_defaults(settings: Settings) -> dict[str, float | None]:
    return {
        "max_sessions": settings.key_max_sessions, "max_memory_bytes": settings.key_max_memory_bytes,
        "max_cpus": settings.key_max_cpus, "max_context_bytes": settings.key_max_context_bytes,
        "requests_per_s": settings.key_requests_per_s, "max_streams": settings.key_max_streams,
    }


class LimitService:
    def __init__(self, settings: Settings, store: Store, cache_s: float = 1.0) -> None:
        self.settings = settings
        self.store = store
        self.cache_s = cache_s
        self._cache: dict[str, tuple[KeyLimits, float]] = {}
        self._buckets: dict[str, tuple[float, float]] = {}  # owner -> (tokens, monotonic time)
        self._streams: dict[str, int] = {}
        self._lock = threading.Lock()

    def for_key(self, owner: str) -> KeyLimits:
        """The key's limits: its overrides over the server defaults (re-read from the store every second,
        so `agbox keys set` on a running server takes effect like a revocation)."""
        now = time.monotonic()
        cached = self._cache.get(owner)
        if cached is not None and now - cached[1] < self.cache_s:
            return cached[0]
        values: dict[str, Any] = dict(settings_defaults(self.settings))
        record = self.store.key_by_id(owner)
        if record is not None:
            values.update({k: v for k, v in record.limits.items() if k in LIMIT_NAMES})
        limits = KeyLimits(
            max_sessions=_int(values["max_sessions"]), max_memory_bytes=_int(values["max_memory_bytes"]),
            max_cpus=_float(values["max_cpus"]), max_context_bytes=_int(values["max_context_bytes"]),
            requests_per_s=_float(values["requests_per_s"]), max_streams=_int(values["max_streams"]),
        )
        self._cache[owner] = (limits, now)
        return limits

    # ---- requests per second ---------------------------------------------------------------------

    def admit_request(self, owner: str) -> None:
        rate = self.for_key(owner).requests_per_s
        if rate is None:
            return
        if rate <= 0:
            raise ThrottledError(f"API key {owner} may not make requests (its rate limit is 0 per second)", 60.0)
        burst = max(1.0, rate)
        with self._lock:
            now = time.monotonic()
            tokens, then = self._buckets.get(owner, (burst, now))
            tokens = min(burst, tokens + (now - then) * rate)
            if tokens < 1.0:
                self._buckets[owner] = (tokens, now)
                wait = (1.0 - tokens) / rate
                raise ThrottledError(f"too many requests for API key {owner}: at most {rate:g} per second; "
                                     f"retry after {wait:.2f} s", wait)
            self._buckets[owner] = (tokens - 1.0, now)

    # ---- what a new session would add ------------------------------------------------------------

    def check_new_session(self, owner: str, active: list[tuple[int, float]], memory_bytes: int, cpus: float) -> None:
        """``active``: (memory bytes, cpus) of each active session of the key."""
        limits = self.for_key(owner)
        if limits.max_sessions is not None and len(active) + 1 > limits.max_sessions:
            raise QuotaExceededError(f"API key {owner} has {len(active)} active sessions and may have at most "
                                     f"{limits.max_sessions}; release one first")
        used_memory = sum(m for m, _ in active)
        if limits.max_memory_bytes is not None and used_memory + memory_bytes > limits.max_memory_bytes:
            raise QuotaExceededError(f"API key {owner}: sandbox memory would be {_mib(used_memory + memory_bytes)} "
                                     f"(limit {_mib(limits.max_memory_bytes)}); release a session first")
        used_cpus = sum(c for _, c in active)
        if limits.max_cpus is not None and used_cpus + cpus > limits.max_cpus + 1e-9:
            raise QuotaExceededError(f"API key {owner}: sandbox CPUs would be {used_cpus + cpus:g} "
                                     f"(limit {limits.max_cpus:g}); release a session first")

    def check_context_bytes(self, owner: str, used: int, adding: int) -> None:
        limit = self.for_key(owner).max_context_bytes
        if limit is not None and adding > 0 and used + adding > limit:
            raise QuotaExceededError(f"API key {owner}: context storage would be {used + adding} bytes "
                                     f"(limit {limit}); delete files or contexts first")

    # ---- streams ---------------------------------------------------------------------------------

    def open_stream(self, owner: str) -> None:
        limit = self.for_key(owner).max_streams
        with self._lock:
            count = self._streams.get(owner, 0)
            if limit is not None and count >= limit:
                raise QuotaExceededError(f"API key {owner} has {count} open streams and may have at most {limit}")
            self._streams[owner] = count + 1

    def close_stream(self, owner: str) -> None:
        with self._lock:
            left = self._streams.get(owner, 0) - 1
            if left > 0:
                self._streams[owner] = left
            else:
                self._streams.pop(owner, None)


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def _mib(value: int) -> str:
    return f"{value / 1024**2:.0f} MiB"
