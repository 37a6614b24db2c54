"""The OpenAPI 3.1 document of agbox's HTTP surface, built from the operation table
(``server/operations.py``, which the routes also validate against) plus the few routes that are
not AGB wire operations (pre-signed context objects, the per-session MCP endpoint, health).

Served at ``GET /openapi.json``; checked in as ``docs/openapi.json`` (regenerate with
``python -m agbox.server.openapi > docs/openapi.json``; a test keeps the two equal).

Wire operations always answer HTTP 200 with an AGB envelope: the outcome is ``success`` and the
envelope's ``httpStatusCode`` (what the official SDK expects). The WebSocket (``/ws/{session_id}``)
and link listeners (their own ports) are described in ``info.description``: OpenAPI has no words
for them.
"""

from __future__ import annotations

import copy
import json
import sys
from typing import Any

from agbox.server.operations import OPERATIONS, Operation, Param, Schema

ENVELOPE: Schema = {
    "type": "object",
    "required": ["success", "code", "message", "requestId", "httpStatusCode"],
    "properties": {
        "success": {"type": "boolean"},
        "code": {"type": "string"},
        "message": {"type": "string"},
        "requestId": {"type": "string"},
        "httpStatusCode": {"type": "integer", "minimum": 200, "maximum": 599},
        "data": {},
    },
}

THROTTLED: dict[str, Any] = {
    "description": "the API key's requests-per-second limit: code Throttling, retry after Retry-After seconds",
    "headers": {"Retry-After": {"schema": {"type": "integer", "minimum": 1}}},
    "content": {"application/json": {"schema": ENVELOPE}},
}

DESCRIPTION = """\
agbox speaks the AGB (agbcloud) wire protocol: RPC-style JSON over HTTP. API-key operations take
`Authorization: Bearer <API key>`; session routes take the session's access token (`X-Access-Token`,
or `Authorization: Bearer <token>` on the MCP endpoint). Every wire operation answers HTTP 200 with an
envelope `{success, code, message, requestId, httpStatusCode, data}`; errors have `success=false`, a
4xx `httpStatusCode` for client faults, and a message.

Not expressible here: `GET /ws/{session_id}` (WebSocket, streamed run_code: frames
`{invocationId, source, target, data}`), `GET /pty/{session_id}` (WebSocket terminal) and links
(`getLink` URLs, each on a listener port of its own, `/_agbox/<secret>/...`, relayed to a port
inside the sandbox)."""


def _json_response(description: str, schema: Schema) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _query_schema(schema: Schema) -> Schema:
    """Query values are text: of an ``anyOf`` keep the string form (labels as JSON text)."""
    if "anyOf" in schema:
        for option in schema["anyOf"]:
            if option.get("type") == "string":
                return dict(option)
    return dict(schema)


def _parameter(param: Param) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": param.name, "in": "query", "required": param.required,
                             "schema": _query_schema(param.schema)}
    if param.description:
        entry["description"] = param.description
    return entry


def _body(params: list[Param]) -> dict[str, Any]:
    schema: Schema = {"type": "object", "properties": {}}
    for param in params:
        prop = copy.deepcopy(param.schema)
        if param.description:
            prop["description"] = param.description
        schema["properties"][param.name] = prop
    required = [p.name for p in params if p.required]
    if required:
        schema["required"] = required
    return {"required": False, "content": {"application/json": {"schema": schema}}}


def _wire_operation(operation: Operation) -> dict[str, Any]:
    query = [p for p in operation.params if p.where == "query"]
    body = [p for p in operation.params if p.where == "body"]
    data = {"anyOf": [operation.data, {"type": "null"}]} if operation.data else {}
    envelope = copy.deepcopy(ENVELOPE)
    envelope["properties"]["data"] = data
    entry: dict[str, Any] = {
        "operationId": operation.op,
        "summary": operation.summary,
        "tags": ["contexts" if "Context" in operation.op else "sessions"],
        "parameters": [_parameter(p) for p in query],
        "responses": {"200": _json_response("an AGB envelope (success or a typed error)", envelope),
                      "429": THROTTLED},
        "security": [{"apiKey": []}],
    }
    if operation.method == "POST":
        entry["requestBody"] = _body(body)
    return entry


def _error_responses(*codes: int) -> dict[str, Any]:
    return {str(code): _json_response("an error envelope", ENVELOPE) for code in codes}


def _link_call_tool(operation: Operation) -> dict[str, Any]:
    return {
        "operationId": operation.op,
        "summary": operation.summary,
        "tags": ["sessions"],
        "parameters": [{"name": "session_id", "in": "path", "required": True, "schema": {"type": "string"}}],
        "requestBody": _body(list(operation.params)),
        "responses": {"200": _json_response("the tool's MCP result in an envelope", ENVELOPE),
                      **_error_responses(400, 401, 403, 404, 409, 413, 504), "429": THROTTLED},
        "security": [{"sessionToken": []}],
    }


def _extra_paths() -> dict[str, Any]:
    token = [{"name": "token", "in": "path", "required": True, "schema": {"type": "string"}}]
    denied = _json_response("refused (bad signature, expired, other method) or not found",
                            {"type": "object", "required": ["success", "code", "message"]})
    mcp_path = [{"name": "session_id", "in": "path", "required": True, "schema": {"type": "string"}}]
    any_json: dict[str, Any] = {"application/json": {"schema": {}}}
    return {
        "/context-objects/{token}": {
            "put": {"operationId": "putContextObject", "summary": "Upload a file to a pre-signed URL",
                    "tags": ["contexts"], "parameters": token,
                    "requestBody": {"content": {"application/octet-stream": {"schema": {}}}},
                    "responses": {"200": {"description": "stored"}, "403": denied, "404": denied, "413": denied},
                    "security": []},
            "get": {"operationId": "getContextObject", "summary": "Download a file from a pre-signed URL",
                    "tags": ["contexts"], "parameters": token,
                    "responses": {"200": {"description": "the file",
                                          "content": {"application/octet-stream": {"schema": {}}}},
                                  "403": denied, "404": denied},
                    "security": []},
        },
        "/sessions/{session_id}/mcp": {
            "post": {"operationId": "sessionMcp", "summary": "The session's MCP endpoint (streamable HTTP, "
                     "stateless, JSON responses): JSON-RPC initialize, tools/list, tools/call",
                     "tags": ["mcp"], "parameters": mcp_path,
                     "requestBody": {"content": {"application/json": {"schema": {}}}},
                     "responses": {"200": {"description": "JSON-RPC response", "content": any_json},
                                   "202": {"description": "notification accepted"},
                                   # Some refusals come from the MCP transport itself (plain text).
                                   "4XX": {"description": "JSON-RPC error / refused"}},
                     "security": [{"sessionBearer": []}, {"sessionToken": []}]},
            "delete": {"operationId": "sessionMcpDelete", "summary": "Session termination (a no-op: stateless)",
                       "tags": ["mcp"], "parameters": mcp_path,
                       "responses": {"200": {"description": "done"}, "4XX": {"description": "refused"}},
                       "security": [{"sessionBearer": []}, {"sessionToken": []}]},
            "get": {"operationId": "sessionMcpStream", "summary": "Not offered: the endpoint is stateless (405)",
                    "tags": ["mcp"], "parameters": mcp_path,
                    "responses": {"4XX": {"description": "refused", "content": any_json}},
                    "security": [{"sessionBearer": []}, {"sessionToken": []}]},
        },
        "/sessions/{session_id}/view": {
            "get": {"operationId": "sessionView", "summary": "The session's page (resourceUrl), by its authcode",
                    "tags": ["sessions"], "security": [],
                    "parameters": [*mcp_path, {"name": "authcode", "in": "query", "required": False,
                                               "schema": {"type": "string"}}],
                    "responses": {"200": {"description": "HTML page", "content": {"text/html": {"schema": {}}}},
                                  "403": {"description": "not valid for a session",
                                          "content": {"text/html": {"schema": {}}}}}},
        },
        "/desktop/{session_id}/screenshots/{key}.png": {
            "get": {"operationId": "desktopScreenshot", "summary": "An image taken by system_screenshot (the key is "
                    "the credential), while the session lives", "tags": ["desktop"], "security": [],
                    "parameters": [*mcp_path, {"name": "key", "in": "path", "required": True,
                                               "schema": {"type": "string"}}],
                    "responses": {"200": {"description": "PNG", "content": {"image/png": {"schema": {}}}},
                                  "404": {"description": "unknown or ended", "content": {"text/plain": {"schema": {}}}}}},
        },
        "/desktop/{session_id}/{secret}/": {
            "get": {"operationId": "desktopLiveView", "summary": "A desktop session's live view (noVNC page; "
                    "resourceUrl of desktop sessions); its WebSocket is .../websockify", "tags": ["desktop"],
                    "security": [], "parameters": [*mcp_path, {"name": "secret", "in": "path", "required": True,
                                                               "schema": {"type": "string"}}],
                    "responses": {"200": {"description": "HTML page", "content": {"text/html": {"schema": {}}}},
                                  "404": {"description": "unknown or ended", "content": {"text/plain": {"schema": {}}}}}},
        },
        "/metrics": {"get": {"operationId": "metrics", "summary": "Prometheus metrics (aggregates, for key holders)",
                             "security": [{"apiKey": []}],
                             "responses": {"200": {"description": "Prometheus text exposition",
                                                   "content": {"text/plain": {"schema": {"type": "string"}}}},
                                           "401": {"description": "missing or wrong API key",
                                                   "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
        "/health": {"get": {"operationId": "health", "summary": "Liveness", "security": [],
                            "responses": {"200": _json_response("ok", {"type": "object",
                                                                       "properties": {"ok": {"type": "boolean"}}})}}},
        "/openapi.json": {"get": {"operationId": "openapi", "summary": "This document", "security": [],
                                  "responses": {"200": _json_response("the OpenAPI document", {"type": "object"})}}},
    }


def build_document(version: str = "1.0") -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for operation in OPERATIONS.values():
        entry = _link_call_tool(operation) if operation.auth == "sessionToken" else _wire_operation(operation)
        paths.setdefault(operation.path, {})[operation.method.lower()] = entry
    paths.update(_extra_paths())
    return {
        "openapi": "3.1.0",
        "info": {"title": "agbox", "version": version, "description": DESCRIPTION},
        "paths": dict(sorted(paths.items())),
        "components": {"securitySchemes": {
            "apiKey": {"type": "http", "scheme": "bearer", "description": "an agbox API key"},
            "sessionToken": {"type": "apiKey", "in": "header", "name": "X-Access-Token",
                             "description": "the session's access token (createSession's data.token)"},
            "sessionBearer": {"type": "http", "scheme": "bearer", "description": "the session's access token"},
        }},
    }


def render(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=1, sort_keys=False) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render(build_document()))
