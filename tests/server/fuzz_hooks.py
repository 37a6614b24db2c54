"""Schemathesis hooks for fuzzing `agbox serve` (loaded through SCHEMATHESIS_HOOKS by tests/server/test_fuzz.py
and `make fuzz`).

- ``agb_envelope_is_not_an_internal_error``: wire operations answer HTTP 200 with an envelope (the AGB
  protocol), so an internal error hides in ``httpStatusCode``/``code``; this check looks there too.
- ``map_case``: half of the generated ``sessionId``/``session_id``/``contextId`` values are replaced
  by a real session and context (given by the environment), so cases reach the tool and context code
  instead of stopping at "not found". Release and delete operations never get the live ids.
"""

from __future__ import annotations

import os
from typing import Any

import schemathesis

LIVE = {"sessionId": os.environ.get("AGBOX_FUZZ_SESSION", ""), "contextId": os.environ.get("AGBOX_FUZZ_CONTEXT", "")}
# Operations that would end the live objects for every later case.
KEEP_RANDOM = ("/mcp/releaseSession", "/mcp/releaseSessionAsync", "/sdk/DeleteContext", "/sdk/ClearContext")


@schemathesis.check
def agb_envelope_is_not_an_internal_error(ctx: Any, response: Any, case: Any) -> bool | None:
    if not response.headers.get("content-type", [""])[0].startswith("application/json"):
        return None
    try:
        body = response.json()
    except ValueError:
        return None
    if not isinstance(body, dict) or "httpStatusCode" not in body:
        return None
    status = body.get("httpStatusCode")
    if body.get("code") == "InternalError" or (isinstance(status, int) and status >= 500):
        raise AssertionError(f"internal error in an envelope: {body.get('code')}: {body.get('message')}")
    return None


def _swap(values: Any, names: tuple[str, ...]) -> None:
    if not isinstance(values, dict):
        return
    for name in names:
        live = LIVE.get(name) if name != "id" else LIVE["contextId"]
        if live and name in values and len(str(values[name])) % 2 == 0:
            values[name] = live


@schemathesis.hook
def map_case(context: Any, case: Any) -> Any:
    if case.operation.path in KEEP_RANDOM:
        # Schemathesis also reuses ids it saw in responses: keep the live ones out of these operations.
        for values in (case.query, case.body):
            if isinstance(values, dict):
                for name in ("sessionId", "id", "contextId"):
                    if values.get(name) in LIVE.values():
                        values[name] = "fuzz-not-live"
        return case
    _swap(case.query, ("sessionId", "contextId"))
    _swap(case.body, ("sessionId", "contextId"))
    if case.path_parameters and LIVE["sessionId"] and "session_id" in case.path_parameters:
        if len(str(case.path_parameters["session_id"])) % 2 == 0:
            case.path_parameters["session_id"] = LIVE["sessionId"]
    return case
