"""A session's files in whole-file terms, for the web console: list a folder, stream a file out, stream
one in, read a text file for viewing, and the TCP ports programs listen on.

Built on the file tools (``services/tools.ToolService.call`` with ``list_directory``, ``get_file_info``,
``read_file``, ``write_file``, ``move_file``, ``delete_file``), so the console goes through the same
checks, limits and activity accounting as an SDK or MCP client. Bytes travel in ranges of ``CHUNK``:
a download reads range after range while the previous one is being sent; an upload is written to a
hidden temporary file next to its target, range after range, and moved in place only once complete,
so an upload cut off half way never replaces the file it was meant to replace.

A tool's own failure (a missing path, a permission, a full disk) becomes ``NotFoundError`` or
``InvalidRequestError`` carrying the tool's message, which names the path.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import posixpath
import secrets
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

from agbox.errors import AgboxError, InvalidRequestError, NotFoundError
from agbox.services.tools import ToolService

CHUNK = 4 * 1024 * 1024
# The text viewer shows at most this much of a file (the rest is a download away).
TEXT_VIEW_BYTES = 1024 * 1024
# Sizes are looked up one file at a time; a folder with more files than this lists names only.
SIZED_ENTRIES = 200
HOME = "/home/user"


@dataclasses.dataclass
class Entry:
    name: str
    directory: bool
    size: int | None = None


@dataclasses.dataclass
class TextView:
    text: str
    size: int
    truncated: bool


def absolute(path: str) -> str:
    """The normalised absolute form of a sandbox path (relative paths start at the sandbox home)."""
    if not isinstance(path, str) or not path.strip():
        raise InvalidRequestError("a path is required")
    if "\x00" in path:
        raise InvalidRequestError("a path cannot contain NUL characters")
    return posixpath.normpath(posixpath.join(HOME, path.strip()))


def _parse_info(text: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(": ")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


def listening_ports(proc_net_tcp: str) -> set[int]:
    """Ports in the LISTEN state (``0A``) of a ``/proc/net/tcp`` or ``tcp6`` table."""
    ports: set[int] = set()
    for line in proc_net_tcp.splitlines()[1:]:
        fields = line.split()
        if len(fields) > 3 and fields[3] == "0A" and ":" in fields[1]:
            ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


class SandboxFiles:
    def __init__(self, tools: ToolService) -> None:
        self.tools = tools

    async def _tool(self, owner: str, session_id: str, name: str, args: dict[str, Any]) -> str:
        output = await self.tools.call(owner, session_id, name, args)
        if output.is_error:
            message = output.text.strip()
            if "No such file or directory" in message or "not found" in message.lower():
                raise NotFoundError(message)
            raise InvalidRequestError(message)
        return output.text

    async def info(self, owner: str, session_id: str, path: str) -> dict[str, str]:
        return _parse_info(await self._tool(owner, session_id, "get_file_info", {"path": absolute(path)}))

    async def _file_size(self, owner: str, session_id: str, path: str) -> int:
        fields = await self.info(owner, session_id, path)
        if fields.get("isDirectory") == "true":
            raise InvalidRequestError(f"Is a directory, not a file: {path}")
        if fields.get("isFile") != "true":
            raise InvalidRequestError(f"Not a regular file: {path}")
        return int(fields.get("size", "0"))

    async def list_folder(self, owner: str, session_id: str, path: str) -> list[Entry]:
        """The folder's entries, folders first, with the sizes of its files (when it has at most
        ``SIZED_ENTRIES`` of them)."""
        folder = absolute(path)
        text = await self._tool(owner, session_id, "list_directory", {"path": folder})
        entries = []
        for line in text.splitlines():
            if line.startswith("[DIR] "):
                entries.append(Entry(line[6:], True))
            elif line.startswith("[FILE] "):
                entries.append(Entry(line[7:], False))
        files = [e for e in entries if not e.directory]
        if len(files) <= SIZED_ENTRIES:
            infos = await asyncio.gather(*(self.tools.call(owner, session_id, "get_file_info",
                                                           {"path": posixpath.join(folder, e.name)})
                                           for e in files))
            for entry, output in zip(files, infos, strict=True):
                size = _parse_info(output.text).get("size") if not output.is_error else None
                entry.size = int(size) if size is not None and size.isdigit() else None
        return entries

    async def open_read(self, owner: str, session_id: str, path: str) -> tuple[int, AsyncIterator[bytes]]:
        """The file's size and its bytes, read range by range as the consumer asks for them."""
        target = absolute(path)
        size = await self._file_size(owner, session_id, target)

        async def chunks() -> AsyncIterator[bytes]:
            offset = 0
            while offset < size:
                data = await self._tool(owner, session_id, "read_file", {
                    "path": target, "offset": offset, "length": min(CHUNK, size - offset), "format": "binary"})
                piece = base64.b64decode(data)
                if not piece:  # the file shrank while being read
                    return
                offset += len(piece)
                yield piece

        return size, chunks()

    async def write(self, owner: str, session_id: str, path: str, body: AsyncIterable[bytes]) -> int:
        """Write ``body`` to ``path`` (replacing a file there); returns the byte count."""
        target = absolute(path)
        folder, name = posixpath.split(target)
        if not name:
            raise InvalidRequestError(f"not a file path: {path}")
        existing = await self._existing(owner, session_id, target)
        if existing == "directory":
            raise InvalidRequestError(f"Is a directory, not a file: {target}")
        staging = posixpath.join(folder, f".{name}.agbox-upload-{secrets.token_hex(4)}")
        written = 0
        try:
            buffer = bytearray()
            mode = "overwrite"
            async for piece in body:
                buffer += piece
                while len(buffer) >= CHUNK:
                    await self._write_range(owner, session_id, staging, bytes(buffer[:CHUNK]), mode)
                    written, mode = written + CHUNK, "append"
                    del buffer[:CHUNK]
            if buffer or mode == "overwrite":
                await self._write_range(owner, session_id, staging, bytes(buffer), mode)
                written += len(buffer)
            if existing == "file":
                await self._tool(owner, session_id, "delete_file", {"path": target})
            await self._tool(owner, session_id, "move_file", {"source": staging, "destination": target})
        except BaseException:
            await self._discard(owner, session_id, staging)
            raise
        return written

    async def _write_range(self, owner: str, session_id: str, path: str, data: bytes, mode: str) -> None:
        await self._tool(owner, session_id, "write_file", {
            "path": path, "content": base64.b64encode(data).decode("ascii"), "mode": mode, "format": "binary"})

    async def _existing(self, owner: str, session_id: str, path: str) -> str | None:
        try:
            fields = await self.info(owner, session_id, path)
        except NotFoundError:
            return None
        return "directory" if fields.get("isDirectory") == "true" else "file"

    async def _discard(self, owner: str, session_id: str, path: str) -> None:
        with contextlib.suppress(AgboxError):  # the session may be gone; nothing is left to clean then
            await self.tools.call(owner, session_id, "delete_file", {"path": path})

    async def text(self, owner: str, session_id: str, path: str) -> TextView:
        """The start of a text file (at most ``TEXT_VIEW_BYTES``); files with NUL bytes are refused."""
        target = absolute(path)
        size = await self._file_size(owner, session_id, target)
        if size == 0:
            return TextView("", 0, False)
        length = min(size, TEXT_VIEW_BYTES)
        text = await self._tool(owner, session_id, "read_file", {"path": target, "length": length})
        if "\x00" in text:
            raise InvalidRequestError(f"{target} is not a text file (it has NUL bytes); download it instead")
        return TextView(text, size, size > length)

    async def listening_ports(self, owner: str, session_id: str) -> list[int]:
        """TCP ports some program in the session listens on (IPv4 and IPv6). ``/proc`` files report a
        size of 0, which ``read_file`` takes at its word, hence ``cat`` through the shell tool."""
        output = await self.tools.call(owner, session_id, "shell", {
            "command": "cat /proc/net/tcp /proc/net/tcp6 2>/dev/null", "timeout_ms": 5000})
        try:
            stdout = json.loads(output.text)["stdout"]
        except (ValueError, KeyError, TypeError):
            raise InvalidRequestError(f"could not read the listening ports: {output.text[:200]}") from None
        return sorted(listening_ports(stdout))
