"""``AGB``: create, get, list and delete sessions, over HTTP or embedded."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from agbox.client.backend import Backend, EmbeddedBackend, HttpBackend
from agbox.client.context import ContextService
from agbox.client.results import (
    DeleteResult,
    GetSessionData,
    GetSessionResult,
    SessionListResult,
    SessionLogEntry,
    SessionLogsResult,
    SessionResult,
)
from agbox.client.session import Session, data_of, envelope_error
from agbox.settings import default_data_dir


@dataclasses.dataclass
class Config:
    endpoint: str
    timeout_ms: int = 60000


@dataclasses.dataclass
class NetworkPolicy:
    """What a session may reach (agbox's own, beside the official fields; the server default otherwise).

    ``allow_out`` / ``deny_out``: IPv4 addresses, CIDRs and domain names (``example.com`` exactly,
    ``*.example.com`` its subdomains); allow beats deny. ``internet``: the verdict for everything no
    list names; left as None it is off when ``allow_out`` is given (an allow-list), else the server's
    default. The host, other sessions, cloud metadata and private ranges stay blocked whatever this says.
    """

    allow_out: list[str] = dataclasses.field(default_factory=list)
    deny_out: list[str] = dataclasses.field(default_factory=list)
    internet: bool | None = None

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {"allowOut": list(self.allow_out), "denyOut": list(self.deny_out)}
        if self.internet is not None:
            wire["internet"] = self.internet
        return wire


@dataclasses.dataclass
class CreateSessionParams:
    labels: dict[str, str] = dataclasses.field(default_factory=dict)
    image_id: str | None = None
    policy_id: str | None = None
    context_syncs: list[Any] = dataclasses.field(default_factory=list)
    idle_release_timeout: int | None = None
    # agbox extension: screen of a desktop image, "WIDTHxHEIGHT" or "WIDTHxHEIGHTxDEPTH".
    desktop_size: str | None = None
    # A BrowserContext (agbox.client.browser): the browser profile, and optionally a fingerprint, in contexts.
    browser_context: Any = None
    network: NetworkPolicy | None = None

    def __post_init__(self) -> None:
        self.labels = self.labels or {}
        self.context_syncs = self.context_syncs or []


class AGB:
    """The client. ``endpoint`` (or ``cfg``, or ``AGB_ENDPOINT``) selects a server; with none, the
    platform runs embedded in this process, keeping its state in ``data_dir``."""

    def __init__(self, api_key: str = "", cfg: Config | None = None, *, endpoint: str | None = None,
                 data_dir: str | Path | None = None, timeout_ms: int | None = None) -> None:
        endpoint = endpoint or (cfg.endpoint if cfg else None) or os.environ.get("AGB_ENDPOINT") or None
        self.timeout_ms = timeout_ms or (cfg.timeout_ms if cfg else int(os.environ.get("AGB_TIMEOUT_MS", "60000")))
        self.api_key = api_key or os.environ.get("AGB_API_KEY", "")
        self._backend: Backend
        if endpoint:
            if not self.api_key:
                raise ValueError("API key is required. Provide it as a parameter or set the AGB_API_KEY "
                                 "environment variable")
            self.endpoint = endpoint
            self._backend = HttpBackend(endpoint, self.api_key, self.timeout_ms / 1000)
        else:
            directory = Path(data_dir or os.environ.get("AGBOX_DATA_DIR") or default_data_dir()).expanduser().resolve()
            self.endpoint = f"embedded:{directory}"
            self._backend = EmbeddedBackend(directory)
        self.context = ContextService(self)

    @property
    def embedded(self) -> bool:
        return self._backend.embedded

    def close(self) -> None:
        """Release the connection (embedded: stop the platform once no client uses it)."""
        self._backend.close()

    def __enter__(self) -> AGB:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def create(self, params: CreateSessionParams | None = None) -> SessionResult:
        if params is None:
            return SessionResult(success=False, error_message="params is required and cannot be None")
        params = copy.deepcopy(params)
        if not params.image_id:
            return SessionResult(success=False, error_message="image_id is required and cannot be empty or None")
        body: dict[str, Any] = {}
        if params.labels:
            body["labels"] = json.dumps(params.labels)
        if params.idle_release_timeout:
            body["timeout"] = params.idle_release_timeout
        if params.policy_id:
            body["mcpPolicyId"] = params.policy_id
        if params.desktop_size:
            body["desktopSize"] = params.desktop_size
        if params.network is not None:
            body["networkPolicy"] = params.network.to_wire()
        syncs = list(params.context_syncs)
        if params.browser_context is not None:  # after the caller's own, as the official SDK orders them
            syncs.extend(params.browser_context.context_syncs())
        persistence = [sync.to_wire() for sync in syncs if hasattr(sync, "to_wire")]
        if persistence:
            body["persistenceDataList"] = persistence
        response = self._backend.call("createSession", {"imageId": params.image_id}, body)
        request_id = response.get("requestId", "")
        data = data_of(response)
        if not response.get("success") or not data.get("sessionId"):
            return SessionResult(request_id=request_id, success=False,
                                 error_message=str(data.get("errMsg") or envelope_error(response, "Unknown error")))
        session = Session(self, data["sessionId"])
        session._apply(data)
        session.image_id = params.image_id
        if persistence:
            session.context.wait_ready()
        return SessionResult(request_id=request_id, success=True, session=session)

    def get_session(self, session_id: str) -> GetSessionResult:
        response = self._backend.call("getSession", None, {"sessionId": session_id})
        data = response.get("data") if isinstance(response.get("data"), dict) else None
        result = GetSessionResult(request_id=response.get("requestId", ""),
                                  http_status_code=int(response.get("httpStatusCode") or 0),
                                  code=str(response.get("code") or ""), success=bool(response.get("success")),
                                  error_message="" if response.get("success") else envelope_error(response, "failed"))
        if data:
            result.data = GetSessionData(
                app_instance_id=data.get("appInstanceId", ""), resource_id=data.get("resourceId", ""),
                session_id=data.get("sessionId", ""), success=True, resource_url=data.get("resourceUrl", ""),
                status=data.get("status", ""), link_url=data.get("linkUrl", ""), ws_url=data.get("wsUrl", ""),
                token=data.get("token", ""), tool_list=data.get("toolList", ""), mcp_url=data.get("mcpUrl", ""))
        return result

    def get(self, session_id: str) -> SessionResult:
        if not session_id or not str(session_id).strip():
            return SessionResult(success=False, error_message="session_id is required")
        response = self._backend.call("getSession", None, {"sessionId": session_id})
        data = data_of(response)
        if not response.get("success") or not data:
            return SessionResult(request_id=response.get("requestId", ""), success=False,
                                 error_message=f"Failed to get session {session_id}: "
                                               f"{envelope_error(response, 'unknown error')}")
        session = Session(self, session_id)
        session._apply(data)
        return SessionResult(request_id=response.get("requestId", ""), success=True, session=session)

    def list(self, labels: dict[str, str] | None = None, page: int | None = None,
             limit: int | None = None) -> SessionListResult:
        labels = labels or {}
        limit = limit or 10
        if page is not None and page < 1:
            return SessionListResult(success=False, error_message=f"Cannot reach page {page}: Page number must be >= 1")
        token = ""
        for _ in range((page or 1) - 1):
            response = self._backend.call("listSession", {"labels": json.dumps(labels), "maxResults": str(limit),
                                                          "nextToken": token or None})
            token = str(response.get("nextToken") or "")
            if not response.get("success") or not token:
                return SessionListResult(request_id=response.get("requestId", ""), success=False,
                                         error_message=f"Cannot reach page {page}: No more pages available")
        response = self._backend.call("listSession", {"labels": json.dumps(labels), "maxResults": str(limit),
                                                      "nextToken": token or None})
        if not response.get("success"):
            return SessionListResult(request_id=response.get("requestId", ""), success=False,
                                     error_message=envelope_error(response, "Failed to list sessions"))
        return SessionListResult(
            request_id=response.get("requestId", ""), success=True,
            session_ids=[item["sessionId"] for item in response.get("data") or []],
            next_token=str(response.get("nextToken") or ""), max_results=int(response.get("maxResults") or limit),
            total_count=int(response.get("count") or 0))

    def delete(self, session: Session, sync_context: bool = False) -> DeleteResult:
        return session.delete(sync_context)

    def get_session_logs(self, session_id: str, after_seq: int = 0, limit: int = 200) -> SessionLogsResult:
        """A session's recent tool calls and terminals, oldest first (agbox's own): also of a session
        that has ended, while the server still keeps its log. ``after_seq`` = a previous ``last_seq``
        gives only what came since."""
        if not session_id or not str(session_id).strip():
            return SessionLogsResult(success=False, error_message="session_id is required")
        response = self._backend.call("getSessionLogs", {"sessionId": session_id, "afterSeq": str(after_seq),
                                                         "maxResults": str(limit)})
        data = data_of(response)
        if not response.get("success"):
            return SessionLogsResult(request_id=response.get("requestId", ""), success=False,
                                     error_message=envelope_error(response, "Failed to get the session's logs"))
        entries = [SessionLogEntry(seq=int(e.get("seq") or 0), time=float(e.get("time") or 0),
                                   tool=str(e.get("tool") or ""), summary=str(e.get("summary") or ""),
                                   ok=bool(e.get("ok")), exit_code=e.get("exitCode"), error=str(e.get("error") or ""),
                                   duration_ms=float(e.get("durationMs") or 0), repeat=int(e.get("repeat") or 1))
                   for e in data.get("entries") or [] if isinstance(e, dict)]
        return SessionLogsResult(request_id=response.get("requestId", ""), success=True,
                                 status=str(data.get("status") or ""), entries=entries,
                                 last_seq=int(data.get("lastSeq") or after_seq))
