"""agbox: an open, self-hostable cloud environment for AI agents, speaking AGB's API.

``from agbox import AGB`` gives the SDK (``AsyncAGB`` its asyncio twin). With ``AGB_ENDPOINT`` (or ``endpoint=``) it talks to an
``agbox serve`` (or any AGB-compatible) server; without one it runs the whole platform embedded in
this process.
"""

from agbox.client import (
    AGB,
    AsyncAGB,
    AsyncSession,
    CreateSessionParams,
    DeleteResult,
    McpTool,
    McpToolResult,
    McpToolsResult,
    NetworkPolicy,
    OperationResult,
    Session,
    SessionListResult,
    SessionLogsResult,
    SessionMetrics,
    SessionMetricsResult,
    SessionResult,
    SessionStatusResult,
)

__all__ = [
    "AGB",
    "AsyncAGB",
    "AsyncSession",
    "CreateSessionParams",
    "DeleteResult",
    "McpTool",
    "McpToolResult",
    "McpToolsResult",
    "NetworkPolicy",
    "OperationResult",
    "Session",
    "SessionListResult",
    "SessionLogsResult",
    "SessionMetrics",
    "SessionMetricsResult",
    "SessionResult",
    "SessionStatusResult",
]
