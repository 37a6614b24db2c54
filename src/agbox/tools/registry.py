"""Which tools an image offers: its tool sets, each a module of this package."""

from __future__ import annotations

import importlib
import logging

from agbox.errors import ToolNotFoundError
from agbox.images import Image
from agbox.tools.base import ToolDef

log = logging.getLogger(__name__)

TOOL_SET_MODULES = {
    "system": "agbox.tools.system",
    "shell": "agbox.tools.shell",
    "files": "agbox.tools.files",
    "code": "agbox.tools.code",
    "computer": "agbox.tools.computer",
}


class ToolRegistry:
    def __init__(self) -> None:
        self._sets: dict[str, list[ToolDef]] = {}
        for name, module_name in TOOL_SET_MODULES.items():
            try:
                module = importlib.import_module(module_name)
            except ModuleNotFoundError as exc:
                if exc.name != module_name:
                    raise
                continue
            self._sets[name] = list(module.TOOLS)

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
