"""Result types, with the names and fields of the official AGB SDK's."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agbox.client.session import Session


@dataclasses.dataclass
class ApiResponse:
    request_id: str = ""

    def get_request_id(self) -> str:
        return self.request_id


@dataclasses.dataclass
class OperationResult(ApiResponse):
    success: bool = False
    data: Any = None
    error_message: str = ""


BoolResult = OperationResult


@dataclasses.dataclass
class SessionResult(ApiResponse):
    success: bool = False
    error_message: str = ""
    session: Session | None = None


@dataclasses.dataclass
class DeleteResult(ApiResponse):
    success: bool = False
    error_message: str = ""


@dataclasses.dataclass
class SessionListResult(ApiResponse):
    success: bool = False
    error_message: str = ""
    session_ids: list[str] = dataclasses.field(default_factory=list)
    next_token: str = ""
    max_results: int = 0
    total_count: int = 0


@dataclasses.dataclass
class SessionStatusResult(ApiResponse):
    http_status_code: int = 0
    code: str = ""
    success: bool = False
    status: str = ""
    error_message: str = ""


@dataclasses.dataclass
class GetSessionData:
    app_instance_id: str = ""
    resource_id: str = ""
    session_id: str = ""
    success: bool = False
    resource_url: str = ""
    status: str = ""
    link_url: str = ""
    ws_url: str = ""
    token: str = ""
    tool_list: str = ""
    mcp_url: str = ""


@dataclasses.dataclass
class GetSessionResult(ApiResponse):
    http_status_code: int = 0
    code: str = ""
    success: bool = False
    data: GetSessionData | None = None
    error_message: str = ""


@dataclasses.dataclass
class McpTool:
    name: str = ""
    description: str = ""
    input_schema: dict[str, Any] = dataclasses.field(default_factory=dict)
    server: str = ""
    tool: str = ""


@dataclasses.dataclass
class McpToolResult(ApiResponse):
    success: bool = False
    data: str = ""
    error_message: str = ""


@dataclasses.dataclass
class McpToolsResult(ApiResponse):
    success: bool = False
    tools: list[McpTool] = dataclasses.field(default_factory=list)
    error_message: str = ""


@dataclasses.dataclass
class SessionMetrics:
    cpu_count: int = 0
    cpu_used_pct: float = 0.0
    disk_total: int = 0
    disk_used: int = 0
    mem_total: int = 0
    mem_used: int = 0
    rx_rate_kbyte_per_s: float = 0.0
    tx_rate_kbyte_per_s: float = 0.0
    rx_used_kbyte: float = 0.0
    tx_used_kbyte: float = 0.0
    timestamp: str = ""


@dataclasses.dataclass
class SessionMetricsResult(ApiResponse):
    success: bool = False
    metrics: SessionMetrics | None = None
    error_message: str = ""
    raw: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class CommandResult(ApiResponse):
    success: bool = False
    output: str = ""
    error_message: str = ""
    exit_code: int = 0
    stdout: str = ""
    stderr: str = ""
    trace_id: str = ""


@dataclasses.dataclass
class SessionLogEntry:
    """One tool call (or terminal) of a session, as ``session.logs()`` reports it (agbox's own)."""

    seq: int = 0
    time: float = 0.0  # seconds since the epoch, when the (last) call started
    tool: str = ""  # the tool's name, or "terminal"
    summary: str = ""  # the command line, path ... (clipped; payloads and environment values are not kept)
    ok: bool = False
    exit_code: int | None = None
    error: str = ""
    duration_ms: float = 0.0
    repeat: int = 1  # identical consecutive calls folded into this entry


@dataclasses.dataclass
class SessionLogsResult(ApiResponse):
    success: bool = False
    error_message: str = ""
    status: str = ""  # the session's status (RUNNING, ..., FINISH)
    entries: list[SessionLogEntry] = dataclasses.field(default_factory=list)
    last_seq: int = 0  # pass it as after_seq to get only what came later
