"""The session's page for a person (AGB's ``resourceUrl``): its address and who may open it.

AGB's resource URL carries ``resourceId`` and ``authcode`` query parameters and opens the session in
a browser. Ours does the same: ``{base}/sessions/{id}/view?resourceId=r-…&authcode=…``. The authcode
is an HMAC of the session's id under its access token, so it opens only this session's page, needs
no storage, and does not reveal the token (which would allow tool calls).
"""

from __future__ import annotations

import hashlib
import hmac
import urllib.parse

from agbox.models import SessionRecord
from agbox.wirejson import same_secret


def resource_id(record: SessionRecord) -> str:
    return f"r-{record.id.removeprefix('session-')}"


def authcode(record: SessionRecord) -> str:
    return hmac.new(record.token.encode(), f"resource-view:{record.id}".encode(), hashlib.sha256).hexdigest()[:32]


def authcode_valid(record: SessionRecord, code: str) -> bool:
    return same_secret(code, authcode(record))


def resource_url(base_url: str, record: SessionRecord) -> str:
    query = urllib.parse.urlencode({"resourceId": resource_id(record), "authcode": authcode(record)})
    return f"{base_url}/sessions/{record.id}/view?{query}"
