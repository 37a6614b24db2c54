"""Shared pieces of the in-sandbox agent (stdlib only)."""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: importing typing is a measurable part of the agent's start
    from typing import Any, Callable


class OpError(Exception):
    """An expected failure of an op; ``kind`` lets the host pick the error code."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


class Flag:
    """A switch that is turned on once and read by other threads (a plain attribute: under the GIL a
    reader sees either value, and nothing waits on it)."""

    __slots__ = ("_on",)

    def __init__(self) -> None:
        self._on = False

    def set(self) -> None:
        self._on = True

    def is_set(self) -> bool:
        return self._on


class Ctx:
    """What an op gets besides its arguments: its request id, an event emitter, cancellation."""

    def __init__(self, rid: Any, emit: Callable[[dict[str, Any]], None]) -> None:
        self.rid = rid
        self.emit = emit
        self.cancelled = Flag()
        self.on_cancel: list[Callable[[], None]] = []

    def cancel(self) -> None:
        self.cancelled.set()
        for callback in list(self.on_cancel):
            try:
                callback()
            except OSError:
                pass


def require_str(args: dict[str, Any], key: str) -> str:
    value = args.get(key)
    if not isinstance(value, str) or not value:
        raise OpError("invalid", f"'{key}' must be a non-empty string")
    return value
