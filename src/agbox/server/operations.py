"""Every AGB wire operation declared once: its parameters, where the official SDK sends each one
(query string or JSON body) and the JSON schema of its value.

The same table does two jobs, so they cannot drift apart:
- ``WireApi.dispatch`` checks each request's parameters against it before any handler runs
  (a wrong type, a non-finite or out-of-range number, an over-long id is a precise 400 envelope);
- ``server/openapi.py`` builds the OpenAPI document of the HTTP surface from it.

Query values always arrive as text, so an ``integer`` parameter accepts an integer or a string of
digits, a ``boolean`` one ``true``/``false`` (or the strings), and a JSON-valued one (labels, tool
arguments, ``contextTypes``) the value or a JSON string of it; such strings are decoded later
through ``agbox.wirejson``. Parameters not declared here are ignored (the SDK sends a few unused
ones), but each op below declares all it reads.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from agbox.errors import InvalidRequestError
from agbox.wirejson import check_value, clip, json_type

Schema = dict[str, Any]

ID_MAX = 256
NAME_MAX = 256
PATH_MAX = 4096
JSON_TEXT_MAX = 1024 * 1024
INT32_MAX = 2**31 - 1

ID: Schema = {"type": "string", "maxLength": ID_MAX}
NAME: Schema = {"type": "string", "maxLength": NAME_MAX}
PATH: Schema = {"type": "string", "maxLength": PATH_MAX}
TOKEN: Schema = {"type": "string", "maxLength": 4096}
# Echoed in the x-request-id header: printable ASCII only.
REQUEST_ID: Schema = {"type": "string", "maxLength": 128, "pattern": "^[!-~]*$"}


def integer(minimum: int, maximum: int) -> Schema:
    return {"type": "integer", "minimum": minimum, "maximum": maximum}


BOOLEAN: Schema = {"type": "boolean"}
LABELS: Schema = {"anyOf": [{"type": "string", "maxLength": JSON_TEXT_MAX,
                             "description": "JSON text of an object of string values"},
                            {"type": "object", "additionalProperties": {"type": "string"}, "maxProperties": 64}]}
JSON_TEXT: Schema = {"type": "string", "maxLength": JSON_TEXT_MAX}


@dataclasses.dataclass(frozen=True)
class Param:
    name: str
    schema: Schema
    where: str = "body"  # where the official SDK sends it: "query" or "body"
    required: bool = False
    description: str = ""


@dataclasses.dataclass(frozen=True)
class Operation:
    op: str
    method: str
    path: str
    summary: str
    params: tuple[Param, ...] = ()
    # The shape of ``data`` in a successful envelope (documentation only).
    data: Schema = dataclasses.field(default_factory=dict)
    # "apiKey" (Authorization: Bearer <API key>) or "sessionToken" (X-Access-Token: <session token>).
    auth: str = "apiKey"


def _q(name: str, schema: Schema, description: str = "", required: bool = False) -> Param:
    return Param(name, schema, "query", required, description)


def _b(name: str, schema: Schema, description: str = "", required: bool = False) -> Param:
    return Param(name, schema, "body", required, description)


SESSION_ID_BODY = _b("sessionId", ID, "the session's id", required=True)
SESSION_ID_QUERY = _q("sessionId", ID, "the session's id", required=True)
PAGING = (_q("maxResults", integer(1, 1000), "page size (default 10)"),
          _q("nextToken", TOKEN, "the nextToken of the previous page"))
PERSISTENCE_ITEM: Schema = {"type": "object", "properties": {
    "contextId": ID, "path": PATH,
    "policy": {"anyOf": [JSON_TEXT, {"type": "object"}], "description": "SyncPolicy (object or JSON text)"}}}
OBJECT: Schema = {"type": "object"}
# Ours (agbox's SDK sends it beside the official fields): what a session may reach; services/network.py
# checks the entries themselves.
NETWORK_ENTRIES: Schema = {"type": "array", "items": {"type": "string", "maxLength": 300}, "maxItems": 256}
NETWORK_POLICY: Schema = {"anyOf": [
    {"type": "object", "properties": {"internet": BOOLEAN, "allowOut": NETWORK_ENTRIES, "denyOut": NETWORK_ENTRIES}},
    JSON_TEXT]}
ANY: Schema = {}

OPERATIONS: dict[str, Operation] = {o.op: o for o in (
    Operation("createSession", "POST", "/mcp/createSession", "Create a session (a sandbox from an image)", (
        _q("imageId", ID, "image to start (default agb-code-space-1)"),
        _q("sdkStats", JSON_TEXT, "ignored"),
        _b("labels", LABELS, "labels of the session"),
        _b("timeout", integer(0, INT32_MAX), "idle release timeout in seconds (0 = the server default)"),
        _b("mcpPolicyId", ID, "recorded, not enforced"),
        _b("persistenceDataList", {"anyOf": [{"type": "array", "items": PERSISTENCE_ITEM, "maxItems": 64},
                                             JSON_TEXT]}, "contexts to mount"),
        _b("sessionId", ID, "ignored"), _b("contextId", ID, "ignored"),
        _b("desktopSize", {"type": "string", "maxLength": 32},
           "agbox: screen of a desktop image, WIDTHxHEIGHT[xDEPTH] (default: the server's desktop_size)"),
        _b("networkPolicy", NETWORK_POLICY, "ours: internet (bool), allowOut / denyOut (CIDRs, domain names); "
           "left out = the server default"),
    ), OBJECT),
    Operation("setNetworkPolicy", "POST", "/mcp/setNetworkPolicy", "Replace a running session's network policy (ours)",
              (SESSION_ID_BODY, _b("networkPolicy", NETWORK_POLICY, "the new policy", required=True)), OBJECT),
    Operation("getSessionLogs", "GET", "/sdk/GetSessionLogs",
              "A session's recent tool calls and terminals, oldest first (ours; also after it ended, while kept)", (
                  SESSION_ID_QUERY,
                  _q("afterSeq", integer(0, 2**53), "only entries with a larger seq (to follow the log)"),
                  _q("maxResults", integer(1, 1000), "at most this many, the newest (default 200)"),
              ), {"type": "object", "properties": {
                  "sessionId": ID, "status": {"type": "string"}, "lastSeq": {"type": "integer"},
                  "entries": {"type": "array", "items": {"type": "object", "properties": {
                      "seq": {"type": "integer"}, "time": {"type": "number", "description": "epoch seconds"},
                      "tool": {"type": "string", "description": "tool name, or terminal"},
                      "summary": {"type": "string", "description": "command line, path ... (clipped; payloads "
                                                                      "and environment values are never kept)"},
                      "ok": {"type": "boolean"}, "exitCode": {"type": ["integer", "null"]},
                      "error": {"type": "string"}, "durationMs": {"type": "number"},
                      "repeat": {"type": "integer", "description": "identical consecutive calls folded into this one"},
                  }}}}}),
    Operation("getSession", "POST", "/mcp/getSession", "Session details and URLs", (SESSION_ID_BODY,), OBJECT),
    Operation("getSessionInfo", "POST", "/mcp/getSessionInfo", "Session status (does not count as activity)",
              (SESSION_ID_BODY,), OBJECT),
    Operation("releaseSessionAsync", "POST", "/mcp/releaseSessionAsync", "Start releasing a session",
              (SESSION_ID_BODY,)),
    Operation("releaseSession", "POST", "/mcp/releaseSession", "Release a session and wait for it",
              (SESSION_ID_BODY,)),
    Operation("refreshSessionIdleTime", "POST", "/mcp/refreshSessionIdleTime", "Reset the idle timer",
              (SESSION_ID_QUERY,)),
    Operation("listSession", "GET", "/sdk/ListSession", "List this key's active sessions", (
        *PAGING, _q("labels", LABELS, "only sessions with all these labels"), _q("isAll", JSON_TEXT, "ignored"),
    ), {"type": "array"}),
    Operation("setLabel", "POST", "/sdk/SetLabel", "Replace a session's labels", (
        SESSION_ID_QUERY, _q("Labels", LABELS, "JSON text of the labels"), _b("labels", LABELS, "alias of Labels"),
    )),
    Operation("getLabel", "GET", "/sdk/GetLabel", "A session's labels", (SESSION_ID_QUERY, *PAGING), OBJECT),
    Operation("getMcpResource", "POST", "/mcp/getMcpResource", "A session's resource URL", (SESSION_ID_BODY,),
              OBJECT),
    Operation("listTools", "POST", "/mcp/listTools", "The MCP tools of an image (JSON text)",
              (_q("imageId", ID, "image (default agb-code-space-1)"),), {"type": "string"}),
    Operation("callMcpTool", "POST", "/mcp", "Call one MCP tool in a session", (
        _q("autoGenSession", JSON_TEXT, "ignored"), _q("imageId", ID, "ignored"),
        SESSION_ID_BODY, _b("name", NAME, "tool name", required=True),
        _b("args", {"anyOf": [JSON_TEXT | {"maxLength": INT32_MAX}, {"type": "object"}]},
           "tool arguments (object or JSON text of one)"),
        _b("server", NAME, "ignored"),
    ), OBJECT),
    Operation("linkCallTool", "POST", "/link/{session_id}/callTool",
              "Call one MCP tool with the session token (the LinkUrl route of the official SDK)", (
                  _b("tool", NAME, "tool name"), _b("name", NAME, "alias of tool"),
                  _b("args", {"anyOf": [JSON_TEXT | {"maxLength": INT32_MAX}, {"type": "object"}]}),
                  _b("requestId", REQUEST_ID, "echoed as the envelope's requestId"), _b("server", NAME, "ignored"),
              ), OBJECT, auth="sessionToken"),
    Operation("getLink", "GET", "/internet/getLink", "A URL that reaches a port inside the session", (
        SESSION_ID_QUERY, _q("protocolType", NAME, "https or wss (informational)"),
        _q("port", integer(1, 65535), "port inside the sandbox"),
    ), OBJECT),
    Operation("getLinkAsync", "GET", "/mcp/getLink", "Same as getLink", (
        SESSION_ID_QUERY, _q("protocolType", NAME), _q("port", integer(1, 65535)),
    ), OBJECT),
    # ---- browser
    Operation("initBrowser", "POST", "/browser/init", "Start (or reuse) the session's Chromium; data.port", (
        SESSION_ID_QUERY, _q("persistentPath", PATH, "profile directory inside the sandbox"),
        _q("browserOption", JSON_TEXT, "JSON text of BrowserOption"),
    ), OBJECT),
    Operation("getCdpLink", "POST", "/internet/getCdpLink", "The session browser's CDP WebSocket URL",
              (SESSION_ID_QUERY,), OBJECT),
    Operation("getBrowserLiveView", "POST", "/browser/liveView",
              "A URL of a page that shows the session browser's screen, live; data.url", (SESSION_ID_QUERY,), OBJECT),
    # ---- contexts
    Operation("listContexts", "GET", "/sdk/ListContexts", "List this key's contexts", PAGING, {"type": "array"}),
    Operation("getContext", "GET", "/sdk/GetContext", "Get (or create) a context by id or name", (
        _q("id", ID), _q("name", NAME), _q("loginRegionId", NAME, "ignored"),
        _q("allowCreate", BOOLEAN, "create the named context if missing"),
    ), OBJECT),
    Operation("modifyContext", "POST", "/sdk/ModifyContext", "Rename a context",
              (_q("id", ID, required=True), _q("name", NAME, required=True))),
    Operation("deleteContext", "POST", "/sdk/DeleteContext", "Delete a context", (_q("id", ID, required=True),)),
    Operation("clearContext", "POST", "/sdk/ClearContext", "Remove every file of a context (asynchronously)",
              (_q("id", ID, required=True),)),
    Operation("syncContext", "POST", "/sdk/SyncContext", "Sync a mounted context into or out of a session", (
        SESSION_ID_QUERY, _q("contextId", ID), _q("path", PATH),
        _q("mode", {"type": "string", "enum": ["upload", "download", "Upload", "Download"]}),
    )),
    Operation("getContextInfo", "GET", "/sdk/GetContextInfo", "Status of a session's context transfers", (
        SESSION_ID_QUERY, _q("contextId", ID), _q("path", PATH), _q("taskType", NAME),
    ), OBJECT),
    Operation("getContextFileUploadUrl", "POST", "/sdk/GetContextFileUploadUrl", "A pre-signed PUT URL",
              (_q("contextId", ID, required=True), _q("filePath", PATH, required=True)), OBJECT),
    Operation("getContextFileDownloadUrl", "POST", "/sdk/GetContextFileDownloadUrl", "A pre-signed GET URL",
              (_q("contextId", ID, required=True), _q("filePath", PATH, required=True)), OBJECT),
    Operation("deleteContextFile", "POST", "/sdk/DeleteContextFile", "Delete a file (or folder) of a context",
              (_q("contextId", ID, required=True), _q("filePath", PATH, required=True))),
    Operation("describeContextFiles", "POST", "/sdk/DescribeContextFiles", "List a folder of a context", (
        _q("contextId", ID, required=True), _q("parentFolderPath", PATH),
        _q("pageNumber", integer(1, INT32_MAX)), _q("pageSize", integer(1, 1000)),
    ), {"type": "array"}),
    Operation("getAndLoadInternalContext", "POST", "/sdk/GetAndLoadInternalContext",
              "The session's internal file-transfer context", (
                  SESSION_ID_QUERY,
                  _q("contextTypes", {"anyOf": [JSON_TEXT, {"type": "array", "items": NAME, "maxItems": 16}]},
                     'JSON list, e.g. ["file_transfer"]'),
              ), {"type": "array"}),
)}

_INT_TEXT = re.compile(r"-?[0-9]{1,19}")
_TYPES: dict[str, type | tuple[type, ...]] = {"string": str, "object": dict, "array": list, "boolean": bool,
                                              "number": (int, float)}


def _check(value: Any, schema: Schema, where: str) -> Any:
    """``value`` if it matches ``schema`` (ints given as text become ints), else InvalidRequestError."""
    if "anyOf" in schema:
        errors = []
        for option in schema["anyOf"]:
            try:
                return _check(value, option, where)
            except InvalidRequestError as exc:
                errors.append(exc.message)
        raise InvalidRequestError(errors[-1] if errors else f"{where} is not valid")
    kind = schema.get("type")
    if kind == "integer":
        if isinstance(value, str) and _INT_TEXT.fullmatch(value.strip()):
            value = int(value.strip())
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidRequestError(f"{where} must be an integer, not {clip(value, 40)}")
        low, high = schema.get("minimum"), schema.get("maximum")
        if (low is not None and value < low) or (high is not None and value > high):
            raise InvalidRequestError(f"{where} must be between {low} and {high}, not {value}")
        return value
    if kind == "boolean":
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if not isinstance(value, bool):
            raise InvalidRequestError(f"{where} must be true or false, not {clip(value, 40)}")
        return value
    if kind is not None:
        expected = _TYPES[kind]
        if not isinstance(value, expected) or (kind == "number" and isinstance(value, bool)):
            noun = {"string": "a string", "object": "an object", "array": "a list", "number": "a number"}[kind]
            raise InvalidRequestError(f"{where} must be {noun}, not {json_type(value)}")
    if isinstance(value, str):
        limit = schema.get("maxLength")
        if limit is not None and len(value) > limit:
            raise InvalidRequestError(f"{where} is too long ({len(value)} characters, at most {limit})")
        pattern = schema.get("pattern")
        if pattern is not None and not re.search(pattern, value):
            raise InvalidRequestError(f"{where} has characters it may not have (allowed: {pattern})")
        if "enum" in schema and value not in schema["enum"]:
            raise InvalidRequestError(f"{where} must be one of {', '.join(schema['enum'])}, not {clip(value, 40)}")
    elif isinstance(value, list):
        if len(value) > schema.get("maxItems", len(value)):
            raise InvalidRequestError(f"{where} has too many items ({len(value)}, at most {schema['maxItems']})")
        items = schema.get("items")
        if items is not None:
            value = [_check(item, items, f"{where}[{i}]") for i, item in enumerate(value)]
    elif isinstance(value, dict):
        if len(value) > schema.get("maxProperties", len(value)):
            raise InvalidRequestError(f"{where} has too many entries ({len(value)}, at most {schema['maxProperties']})")
        props: dict[str, Schema] = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            sub = props.get(key, extra if isinstance(extra, dict) else None)
            if sub is not None:
                value[key] = _check(item, sub, f"{where}.{clip(key, 40)}")
    return value


def validate(op: str, params: dict[str, Any]) -> dict[str, Any]:
    """The params of one request, checked against the op's declaration; a 400 error names the first
    bad parameter. Every value (declared or not) must be valid JSON data (finite, valid Unicode)."""
    check_value(params, "request parameters")
    operation = OPERATIONS.get(op)
    if operation is None:
        return params
    for param in operation.params:
        value = params.get(param.name)
        if value is None:
            continue
        params[param.name] = _check(value, param.schema, param.name)
    return params
