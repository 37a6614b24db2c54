"""The file tools (MCP server ``wuying_filesystem``), with the result texts the official SDK parses."""

from __future__ import annotations

from typing import Any

from agbox.errors import InvalidRequestError
from agbox.tools.base import ToolContext, ToolDef, ToolOutput, arg_int, arg_str, json_text, schema

SERVER = "wuying_filesystem"
# One read_file call returns at most this many bytes (the agent enforces the same bound).
MAX_READ_BYTES = 64 * 1024 * 1024
FILE_OP_TIMEOUT_S = 300.0


def _format(args: dict[str, Any]) -> str:
    value = arg_str(args, "format", required=False) or "text"
    if value not in ("text", "binary"):
        raise InvalidRequestError(f"argument 'format' must be 'text' or 'binary', got {value!r}")
    return value


async def read_file(ctx: ToolContext, args: dict[str, Any]) -> ToolOutput:
    path = arg_str(args, "path")
    offset = arg_int(args, "offset", 0)
    length = arg_int(args, "length", 0, maximum=MAX_READ_BYTES)
    fmt = _format(args)
    result = await ctx.agent("fs_read", {"path": path, "offset": offset, "length": length, "format": fmt},
                             timeout_s=FILE_OP_TIMEOUT_S)
    return ToolOutput(result["data"] if fmt == "binary" else result["text"])


async def write_file(ctx: ToolContext, args: dict[str, Any]) -> ToolOutput:
    path = arg_str(args, "path")
    content = args.get("content")
    if not isinstance(content, str):
        raise InvalidRequestError("argument 'content' must be a string")
    mode = arg_str(args, "mode", required=False) or "overwrite"
    if mode not in ("overwrite", "append"):
        raise InvalidRequestError(f"Invalid write mode: {mode}. Must be 'overwrite' or 'append'.")
    fmt = _format(args)
    result = await ctx.agent("fs_write", {"path": path, "content": content, "mode": mode, "format": fmt},
                             timeout_s=FILE_OP_TIMEOUT_S)
    verb = "appended" if mode == "append" else "wrote"
    return ToolOutput(f"Successfully {verb} {result['written']} bytes to {result['path']}")


async def edit_file(ctx: ToolContext, args: dict[str, Any]) -> ToolOutput:
    path = arg_str(args, "path")
    edits = args.get("edits")
    if not isinstance(edits, list) or not edits:
        raise InvalidRequestError("argument 'edits' must be a non-empty list of {oldText, newText} objects")
    for index, item in enumerate(edits):
        if not isinstance(item, dict) or not isinstance(item.get("oldText"), str) \
                or not isinstance(item.get("newText"), str):
            raise InvalidRequestError(f"edit #{index + 1} must be an object with string oldText and newText")
    dry_run = args.get("dryRun", False)
    if not isinstance(dry_run, bool):
        raise InvalidRequestError("argument 'dryRun' must be a boolean")
    result = await ctx.agent("fs_edit", {"path": path, "edits": edits, "dryRun": dry_run},
                             timeout_s=FILE_OP_TIMEOUT_S)
    diff = result["diff"] or "(no changes)\n"
    if dry_run:
        return ToolOutput(diff)
    return ToolOutput(f"Applied {len(edits)} edit(s) to {path}\n{diff}")


async def list_directory(ctx: ToolContext, args: dict[str, Any]) -> ToolOutput:
    path = arg_str(args, "path")
    result = await ctx.agent("fs_list", {"path": path}, timeout_s=FILE_OP_TIMEOUT_S)
    lines = [f"[DIR] {e['name']}" if e["isDirectory"] else f"[FILE] {e['name']}" for e in result["entries"]]
    return ToolOutput("\n".join(lines))


def _info_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


async def get_file_info(ctx: ToolContext, args: dict[str, Any]) -> ToolOutput:
    path = arg_str(args, "path")
    info = await ctx.agent("fs_info", {"path": path}, timeout_s=FILE_OP_TIMEOUT_S)
    return ToolOutput("\n".join(f"{key}: {_info_value(value)}" for key, value in info.items()))


async def move_file(ctx: ToolContext, args: dict[str, Any]) -> ToolOutput:
    source = arg_str(args, "source")
    destination = arg_str(args, "destination")
    result = await ctx.agent("fs_move", {"source": source, "destination": destination}, timeout_s=FILE_OP_TIMEOUT_S)
    return ToolOutput(f"Successfully moved {result['source']} to {result['destination']}")


async def delete_file(ctx: ToolContext, args: dict[str, Any]) -> ToolOutput:
    path = arg_str(args, "path")
    result = await ctx.agent("fs_delete", {"path": path}, timeout_s=FILE_OP_TIMEOUT_S)
    what = "directory" if result["directory"] else "file"
    return ToolOutput(f"Successfully deleted {what} {result['path']}")


async def create_directory(ctx: ToolContext, args: dict[str, Any]) -> ToolOutput:
    path = arg_str(args, "path")
    result = await ctx.agent("fs_mkdir", {"path": path}, timeout_s=FILE_OP_TIMEOUT_S)
    if result["created"]:
        return ToolOutput(f"Successfully created directory {result['path']}")
    return ToolOutput(f"Directory already exists: {result['path']}")


async def read_multiple_files(ctx: ToolContext, args: dict[str, Any]) -> ToolOutput:
    paths = args.get("paths")
    if not isinstance(paths, list) or not paths or not all(isinstance(p, str) and p for p in paths):
        raise InvalidRequestError("argument 'paths' must be a non-empty list of non-empty strings")
    result = await ctx.agent("fs_read_multiple", {"paths": paths}, timeout_s=FILE_OP_TIMEOUT_S)
    blocks = []
    for item in result["files"]:
        if "error" in item:
            blocks.append(f"{item['path']}: Error - {item['error']}")
        else:
            note = "\n[agbox: truncated]" if item.get("truncated") else ""
            blocks.append(f"{item['path']}:\n{item['content']}{note}\n")
    return ToolOutput("\n---\n".join(blocks))


async def search_files(ctx: ToolContext, args: dict[str, Any]) -> ToolOutput:
    path = arg_str(args, "path")
    pattern = arg_str(args, "pattern")
    excludes = args.get("excludePatterns") or []
    if not isinstance(excludes, list) or not all(isinstance(p, str) for p in excludes):
        raise InvalidRequestError("argument 'excludePatterns' must be a list of strings")
    recursive = args.get("recursive", True)
    if not isinstance(recursive, bool):
        raise InvalidRequestError("argument 'recursive' must be a boolean")
    result = await ctx.agent("fs_search", {"path": path, "pattern": pattern, "excludePatterns": excludes,
                                           "recursive": recursive}, timeout_s=FILE_OP_TIMEOUT_S)
    if not result["matches"]:
        return ToolOutput("No matches found")
    return ToolOutput("\n".join(result["matches"]))


async def get_file_change(ctx: ToolContext, args: dict[str, Any]) -> ToolOutput:
    path = arg_str(args, "path")
    result = await ctx.agent("fs_changes", {"path": path}, timeout_s=FILE_OP_TIMEOUT_S)
    return ToolOutput(json_text(result["events"]))


_PATH = {"type": "string", "description": "Absolute path in the sandbox (relative paths start at /home/user)."}
_FORMAT = {"type": "string", "enum": ["text", "binary"], "default": "text",
           "description": "text: UTF-8 text; binary: base64."}

TOOLS = [
    ToolDef(
        name="read_file",
        description="Read a file, whole or a byte range (offset/length). Text mode returns the UTF-8 text of the "
                    "range (a character cut by the range end is completed, so consecutive ranges concatenate "
                    "exactly); format=binary returns the bytes as base64.",
        input_schema=schema({
            "path": _PATH,
            "offset": {"type": "integer", "minimum": 0, "default": 0, "description": "Byte offset to start at."},
            "length": {"type": "integer", "minimum": 0, "maximum": MAX_READ_BYTES, "default": 0,
                       "description": "Bytes to read; 0 = to the end of the file."},
            "format": _FORMAT,
        }, ["path"]),
        server=SERVER, handler=read_file,
    ),
    ToolDef(
        name="write_file",
        description="Write a file (creating it and its parent directories), overwriting or appending. "
                    "format=binary takes base64 content.",
        input_schema=schema({
            "path": _PATH,
            "content": {"type": "string", "description": "The text, or base64 with format=binary."},
            "mode": {"type": "string", "enum": ["overwrite", "append"], "default": "overwrite"},
            "format": _FORMAT,
        }, ["path", "content"]),
        server=SERVER, handler=write_file,
    ),
    ToolDef(
        name="edit_file",
        description="Replace text in a file: each edit replaces the first occurrence of oldText with newText "
                    "(falling back to a line match that ignores indentation). Returns a unified diff; "
                    "dryRun only previews it.",
        input_schema=schema({
            "path": _PATH,
            "edits": {"type": "array", "minItems": 1, "items": {
                "type": "object", "required": ["oldText", "newText"],
                "properties": {"oldText": {"type": "string"}, "newText": {"type": "string"}}}},
            "dryRun": {"type": "boolean", "default": False},
        }, ["path", "edits"]),
        server=SERVER, handler=edit_file,
    ),
    ToolDef(
        name="list_directory",
        description="List a directory: one line per entry, '[DIR] name' or '[FILE] name'.",
        input_schema=schema({"path": _PATH}, ["path"]),
        server=SERVER, handler=list_directory,
    ),
    ToolDef(
        name="get_file_info",
        description="Metadata of a file or directory as 'key: value' lines: size, created, modified, accessed, "
                    "isDirectory, isFile, isSymlink, permissions.",
        input_schema=schema({"path": _PATH}, ["path"]),
        server=SERVER, handler=get_file_info,
    ),
    ToolDef(
        name="move_file",
        description="Move or rename a file or directory. Fails if the destination exists.",
        input_schema=schema({"source": _PATH, "destination": _PATH}, ["source", "destination"]),
        server=SERVER, handler=move_file,
    ),
    ToolDef(
        name="delete_file",
        description="Delete a file, or a directory with everything in it.",
        input_schema=schema({"path": _PATH}, ["path"]),
        server=SERVER, handler=delete_file,
    ),
    ToolDef(
        name="create_directory",
        description="Create a directory and any missing parents; succeeds if it already exists.",
        input_schema=schema({"path": _PATH}, ["path"]),
        server=SERVER, handler=create_directory,
    ),
    ToolDef(
        name="read_multiple_files",
        description="Read several text files at once: blocks '<path>:\\n<content>' separated by '---' lines; "
                    "a file that cannot be read gives '<path>: Error - <reason>'.",
        input_schema=schema({"paths": {"type": "array", "minItems": 1, "items": {"type": "string"}}}, ["paths"]),
        server=SERVER, handler=read_multiple_files,
    ),
    ToolDef(
        name="search_files",
        description="Find files and directories under path whose name (or relative path) matches a glob pattern "
                    "(a pattern without wildcards matches names containing it, ignoring case). Returns one path "
                    "per line, or 'No matches found'.",
        input_schema=schema({
            "path": _PATH,
            "pattern": {"type": "string", "description": "Glob, e.g. '*.py' or 'src/**/*.ts'."},
            "excludePatterns": {"type": "array", "items": {"type": "string"},
                                "description": "Globs of names or relative paths to skip (directories are not "
                                               "descended)."},
            "recursive": {"type": "boolean", "default": True},
        }, ["path", "pattern"]),
        server=SERVER, handler=search_files,
    ),
    ToolDef(
        name="get_file_change",
        description="Changes under a directory (or to a file) since the previous call for the same path, from "
                    "kernel notifications: JSON [{eventType: create|modify|delete, path, pathType: "
                    "file|directory}]. The first call sets the baseline and returns [].",
        input_schema=schema({"path": _PATH}, ["path"]),
        server=SERVER, handler=get_file_change,
    ),
]
