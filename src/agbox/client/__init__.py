"""The agbox SDK, with the AGB SDK's names: ``AGB``, ``Session``, ``CreateSessionParams`` and results."""

from agbox.client.agb import AGB, Config, CreateSessionParams, NetworkPolicy
from agbox.client.aio import AsyncAGB, AsyncSession
from agbox.client.results import (
    CommandResult,
    DeleteResult,
    GetSessionResult,
    McpTool,
    McpToolResult,
    McpToolsResult,
    OperationResult,
    SessionListResult,
    SessionLogEntry,
    SessionLogsResult,
    SessionMetrics,
    SessionMetricsResult,
    SessionResult,
    SessionStatusResult,
)
from agbox.client.session import Session

__all__ = [
    "AGB",
    "AsyncAGB",
    "AsyncSession",
    "CommandResult",
    "Config",
    "CreateSessionParams",
    "DeleteResult",
    "GetSessionResult",
    "McpTool",
    "McpToolResult",
    "McpToolsResult",
    "NetworkPolicy",
    "OperationResult",
    "Session",
    "SessionListResult",
    "SessionLogEntry",
    "SessionLogsResult",
    "SessionMetrics",
    "SessionMetricsResult",
    "SessionResult",
    "SessionStatusResult",
]
