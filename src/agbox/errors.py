"""The one exception tree of agbox, shared by the services, the server and the client.

    AgboxError                       everything agbox raises on purpose
    ├── InvalidRequestError          400  bad arguments, malformed JSON, wrong types
    ├── AuthenticationError          401  missing or unknown API key
    ├── NotFoundError                404
    │   ├── SessionNotFoundError         code InvalidMcpSession.NotFound (the official SDK keys on it)
    │   ├── ImageNotFoundError
    │   └── ToolNotFoundError
    ├── ConflictError                409  e.g. the session is being released
    ├── LimitExceededError           413  payload too large, too many sessions on the server
    │   └── QuotaExceededError           403  a per-key limit (sessions, memory, CPUs, context bytes, streams)
    ├── ThrottledError               429  a key's requests per second (with Retry-After)
    ├── SandboxError                 500  the runtime could not do what was asked
    └── ToolTimeoutError             504  a tool ran past its deadline

Each class carries its HTTP status and wire ``code``; the server's single error edge
and the client's decoder both read them from here.
"""

from __future__ import annotations


class AgboxError(Exception):
    status_code: int = 500
    code: str = "InternalError"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequestError(AgboxError):
    status_code = 400
    code = "InvalidParameter"


class AuthenticationError(AgboxError):
    status_code = 401
    code = "InvalidApiKey"


class NotFoundError(AgboxError):
    status_code = 404
    code = "NotFound"


class SessionNotFoundError(NotFoundError):
    # The official SDK's delete poll and tests match this code and the words "not found".
    code = "InvalidMcpSession.NotFound"

    def __init__(self, session_id: str, ended: str = "") -> None:
        super().__init__(f"session {session_id} not found" + (f": it has ended ({ended})" if ended else ""))
        self.session_id = session_id


class ImageNotFoundError(NotFoundError):
    code = "InvalidImageId.NotFound"


class ToolNotFoundError(NotFoundError):
    code = "InvalidTool.NotFound"


class ContextNotFoundError(NotFoundError):
    code = "InvalidContext.NotFound"


class ConflictError(AgboxError):
    status_code = 409
    code = "IncorrectSessionStatus"


class LimitExceededError(AgboxError):
    status_code = 413
    code = "LimitExceeded"


class QuotaExceededError(LimitExceededError):
    status_code = 403
    code = "QuotaExceeded"


class ThrottledError(AgboxError):
    status_code = 429
    code = "Throttling"

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class SandboxError(AgboxError):
    status_code = 500
    code = "SandboxError"


class ToolTimeoutError(AgboxError):
    status_code = 504
    code = "ToolTimeout"


class AccessDeniedError(AgboxError):
    """A signed URL that is wrong, expired, or for another method or object."""

    status_code = 403
    code = "AccessDenied"
