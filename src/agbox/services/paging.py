"""AGB-style paging (``maxResults`` + opaque ``nextToken``) over an in-memory list, shared by services."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any, TypeVar

from agbox.errors import InvalidRequestError

T = TypeVar("T")


def paginate(items: Sequence[T], max_results: Any, next_token: Any, default: int = 10) -> tuple[list[T], str, int]:
    """(the page, the token of the next page or "", the page size used)."""
    try:
        limit = int(max_results) if max_results not in (None, "") else default
    except (TypeError, ValueError) as exc:
        raise InvalidRequestError("maxResults must be an integer") from exc
    if not 1 <= limit <= 1000:
        raise InvalidRequestError("maxResults must be between 1 and 1000")
    offset = 0
    if next_token:
        try:
            offset = int(base64.urlsafe_b64decode(str(next_token).encode()).decode())
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidRequestError("nextToken is not valid") from exc
        # Tokens this function makes are never negative; a negative one is forged, and answering it
        # with an empty page and the same token would loop a client forever. (Past the end is fine:
        # an empty last page, no further token.)
        if offset < 0:
            raise InvalidRequestError("nextToken is not valid (it does not point into this listing)")
    page = list(items[offset:offset + limit])
    end = offset + len(page)
    token = base64.urlsafe_b64encode(str(end).encode()).decode() if end < len(items) else ""
    return page, token, limit
