"""A session's recent activity: the tool calls (``shell`` commands included) and terminals it ran, kept
in memory, a bounded ring per session, for ``agbox logs`` and ``session.logs()``.

What is kept is a short summary a person can read, never the payload: a command line or a path
(clipped), the names of environment variables but not their values, the size of file contents or
typed text but not the text. So the log holds nothing the caller did not send, and much less than
it sent. It lives in the process that ran the calls: a restart, or another control-plane replica,
starts empty.

Polling repeats itself (the console asks for metrics every second): a call identical to the
newest entry (same tool, same summary, same outcome) updates that entry and counts it in
``repeat`` instead of pushing a new one, so a poll cannot flush the commands out of the ring.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import threading
from typing import Any

ENTRIES_PER_SESSION = 200
# Finished sessions whose activity is still readable (the most recently finished).
FINISHED_SESSIONS_KEPT = 256
SUMMARY_CHARS = 200
VALUE_CHARS = 80
ERROR_CHARS = 160
# Arguments whose values are payloads (file contents, typed text, secrets): only their size is kept.
PAYLOAD_ARGS = frozenset({"content", "contents", "data", "text", "edits", "password", "secret", "token",
                          "api_key", "apikey", "authorization", "cookies", "fingerprint"})
# Arguments that only add noise to a summary.
QUIET_ARGS = frozenset({"timeout_ms", "timeout", "stream"})


@dataclasses.dataclass
class ActivityEntry:
    seq: int              # increases with every change of the session's log; a repeat moves its entry up
    time: float           # when the (last) call started, seconds since the epoch
    tool: str             # the tool's name, or "terminal" for a program on a pseudo-terminal
    summary: str          # the command line, path, URL ... (clipped)
    ok: bool
    exit_code: int | None = None
    error: str = ""       # the error code, or the first line of the tool's error (clipped)
    duration_ms: float = 0.0
    repeat: int = 1

    def to_wire(self) -> dict[str, Any]:
        return {"seq": self.seq, "time": round(self.time, 3), "tool": self.tool, "summary": self.summary,
                "ok": self.ok, "exitCode": self.exit_code, "error": self.error,
                "durationMs": round(self.duration_ms, 2), "repeat": self.repeat}


def clip(text: str, limit: int) -> str:
    """One line of at most ``limit`` printable characters (a log is read on terminals: no control codes)."""
    if not text.isprintable():
        text = "".join(c if c.isprintable() else " " if c.isspace() else "?" for c in text)
        text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _value(key: str, value: Any) -> str:
    if key.lower() in PAYLOAD_ARGS:
        size = len(value) if isinstance(value, (str, list, dict)) else 1
        return f"<{size} {'chars' if isinstance(value, str) else 'items'}>"
    if isinstance(value, dict):
        # envs, options: the names only (values may be secrets)
        return "{" + ",".join(str(k) for k in list(value)[:8]) + (",…" if len(value) > 8 else "") + "}"
    if isinstance(value, list):
        if all(isinstance(v, str) for v in value):
            return clip(",".join(value), VALUE_CHARS)
        return f"<{len(value)} items>"
    if isinstance(value, str):
        return clip(value, VALUE_CHARS)
    return json.dumps(value)


def summarize(tool: str, args: dict[str, Any]) -> str:
    """A one-line, clipped description of a call's arguments (see the module docstring)."""
    command = args.get("command")
    if isinstance(command, str):
        head = command
        rest = {k: v for k, v in args.items() if k in ("cwd", "envs") and v}
        if rest:
            head += "  (" + " ".join(f"{k}={_value(k, v)}" for k, v in rest.items()) + ")"
        return clip(head, SUMMARY_CHARS)
    code = args.get("code")
    if isinstance(code, str):
        lines = code.strip().splitlines() or [""]
        more = f"  (+{len(lines) - 1} lines)" if len(lines) > 1 else ""
        return clip(lines[0], SUMMARY_CHARS - len(more)) + more
    parts = [f"{k}={_value(k, v)}" for k, v in args.items() if k not in QUIET_ARGS and v is not None]
    return clip(" ".join(parts), SUMMARY_CHARS)


def outcome_of(text: str, is_error: bool) -> tuple[int | None, str]:
    """(exit code, short error) of a tool's result text: commands answer JSON with ``exit_code``."""
    exit_code = None
    if text.startswith("{") and '"exit_code"' in text:
        try:
            payload = json.loads(text)
        except ValueError:
            payload = None
        if isinstance(payload, dict) and isinstance(payload.get("exit_code"), int):
            exit_code = int(payload["exit_code"])
            if payload.get("timed_out"):
                return exit_code, "timed out"
            return exit_code, ""
    if not is_error:
        return None, ""
    first = next((line for line in text.splitlines() if line.strip()), "")
    return None, clip(first, ERROR_CHARS)


class ActivityLog:
    """Per-session rings of ``ActivityEntry``; safe to use from several threads."""

    def __init__(self, per_session: int = ENTRIES_PER_SESSION, finished_kept: int = FINISHED_SESSIONS_KEPT) -> None:
        self.per_session = per_session
        self.finished_kept = finished_kept
        self._lock = threading.Lock()
        self._live: dict[str, collections.deque[ActivityEntry]] = {}
        self._finished: collections.OrderedDict[str, collections.deque[ActivityEntry]] = collections.OrderedDict()
        self._seq: dict[str, int] = {}

    def add(self, session_id: str, tool: str, summary: str, started_at: float, duration_s: float, ok: bool,
            exit_code: int | None = None, error: str = "") -> None:
        with self._lock:
            # A call that was running when its session ended lands in the finished log.
            ring = self._live.get(session_id)
            if ring is None:
                ring = self._finished.get(session_id)
            if ring is None:
                ring = self._live[session_id] = collections.deque(maxlen=self.per_session)
            seq = self._seq.get(session_id, 0) + 1
            self._seq[session_id] = seq
            last = ring[-1] if ring else None
            if (last is not None and last.tool == tool and last.summary == summary and last.ok == ok
                    and last.exit_code == exit_code and last.error == error):
                last.repeat += 1
                last.seq, last.time, last.duration_ms = seq, started_at, duration_s * 1000
                return
            ring.append(ActivityEntry(seq, started_at, tool, summary, ok, exit_code, error, duration_s * 1000))

    def finish(self, session_id: str) -> None:
        """The session ended: its log stays readable among the most recently finished ones."""
        with self._lock:
            ring = self._live.pop(session_id, None)
            if ring is None:
                ring = self._finished.get(session_id)
            self._finished[session_id] = ring if ring is not None else collections.deque(maxlen=self.per_session)
            self._finished.move_to_end(session_id)
            while len(self._finished) > self.finished_kept:
                dropped, _ = self._finished.popitem(last=False)
                self._seq.pop(dropped, None)

    def entries(self, session_id: str, after_seq: int = 0, limit: int = ENTRIES_PER_SESSION) -> list[ActivityEntry]:
        """Entries newer than ``after_seq``, oldest first; at most ``limit``, the newest ones."""
        with self._lock:
            ring = self._live.get(session_id)
            if ring is None:
                ring = self._finished.get(session_id, collections.deque())
            picked = [dataclasses.replace(e) for e in ring if e.seq > after_seq]
        return picked[-limit:] if limit > 0 else []
