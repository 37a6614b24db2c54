"""The agbox SDK, with the AGB SDK's names: ``AGB``, ``Session``, ``CreateSessionParams`` and results."""

from typing import TYPE_CHECKING

from agbox.client.agb import AGB, Config, CreateSessionParams, NetworkPolicy

if TYPE_CHECKING:  # the twins' precise types (generated from the sync classes; see client/aio_stubgen.py)
    from agbox.client.aio_types import AsyncAGB, AsyncSession
else:
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
