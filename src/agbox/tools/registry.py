"""Which tools an image offers: its tool sets, each a module of this package, named here."""

from __future__ import annotations

from agbox.errors import ToolNotFoundError
from agbox.images import Image
from agbox.tools import browser, code, computer, files, shell, system
from agbox.tools.base import ToolDef

# Tool set name (as image TOML files list them) -> its tools.
TOOL_SETS: dict[str, list[ToolDef]] = {
    "system": system.TOOLS,
    "shell": shell.TOOLS,
    "files": files.TOOLS,
    "code": code.TOOLS,
    "browser": browser.TOOLS,
    "computer": computer.TOOLS,
}


class ToolRegistry:
    def __init__(self) -> None:
        self._sets = {name: list(tools) for name, tools in TOOL_SETS.items()}

    def tools_for(self, image: Image) -> list[ToolDef]:
        tools: list[ToolDef] = []
        for name in image.tool_sets:
            tools.extend(self._sets.get(name, []))
        return tools

    def find(self, image: Image, name: str) -> ToolDef:
        for tool in self.tools_for(image):
            if tool.name == name:
                return tool
        raise ToolNotFoundError(f"tool {name!r} is not offered by image {image.id}")
