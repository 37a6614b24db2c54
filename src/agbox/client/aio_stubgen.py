"""Writes ``aio_types.pyi``: the precise static types of the async SDK, generated from the sync classes.

The async twins (``client/aio.py``) are made when the module is imported, so a type checker sees their
methods as ``Any``. This generator reads the same thing the twins are made from (each sync class's
public methods, their signatures and return annotations) and writes a stub in which every twin method is
``async def`` with the sync method's parameters, and its return type has each sync class that gets a
twin replaced by the twin (``Session`` -> ``AsyncSession``, ``SessionResult`` -> ``AsyncSessionResult``,
whose ``session`` is an ``AsyncSession``). Sub-modules (``session.command``, ``computer.mouse``, ...) are
typed from the ``self.<name> = <Class>(...)`` assignments of the sync ``__init__``, properties from
their getters. ``agbox`` and ``agbox.client`` import the twins from this stub when type checking
(``TYPE_CHECKING``) and from ``aio.py`` at run time: one implementation, typed precisely.

    python -m agbox.client.aio_stubgen > src/agbox/client/aio_types.pyi

(a test keeps the checked-in stub equal to this output).
"""

from __future__ import annotations

import ast
import builtins
import inspect
import re
import sys
import textwrap
from typing import Any

from agbox.client import aio

IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")
LINE = 120
# Modules an annotation may name directly (``threading.Event``, ``builtins.list``).
MODULE_NAMES = {"builtins", "threading", "collections", "typing", "os"}
# Where names that a sync module imports only for type checking come from.
SEARCH_MODULES = ["agbox.client.results", "agbox.client.bulk", "agbox.client.session", "agbox.client.agb", "agbox.client.pty",
                  "agbox.client.file", "agbox.client.code", "agbox.client.browser", "agbox.client.computer",
                  "agbox.client.context", "agbox.client.context_manager", "agbox.client.file_transfer",
                  "agbox.client.command"]


class Stub:
    def __init__(self) -> None:
        self.twin_names = {sync.__name__: twin.__name__ for sync, twin in aio._TWINS.items()}
        self.twin_names["SessionResult"] = "AsyncSessionResult"
        self.imports: dict[str, set[tuple[str, str]]] = {}
        self.module_imports: set[str] = set()

    # ---- names ----------------------------------------------------------------------------------

    def _resolve(self, name: str, home: str) -> tuple[str, str]:
        """(module, real name) of ``name`` as the sync module ``home`` means it."""
        for module_name in [home, *SEARCH_MODULES]:
            module = sys.modules.get(module_name)
            if module is not None and hasattr(module, name):
                owner = getattr(getattr(module, name), "__module__", None)
                if owner is None or owner == "builtins" or not hasattr(sys.modules.get(owner), name):
                    owner = module_name  # an alias (BoolResult) or a name its module re-exports
                return owner, name
        raise LookupError(f"cannot tell where {name!r} (used in {home}) comes from")

    def annotation(self, text: str, home: str, shadowed: frozenset[str] = frozenset()) -> str:
        """``text`` with twin types swapped in and every other name imported; a builtin that a method of
        the class shadows (``list``) is spelled ``builtins.list``."""

        def swap(match: re.Match[str]) -> str:
            word = match.group(0)
            head = word.split(".", 1)[0]
            if word in self.twin_names:
                return self.twin_names[word]
            if word in self.twin_names.values() or word == "AsyncTwin":
                return word
            if head in MODULE_NAMES:
                self.module_imports.add(head)
                return word
            if head in shadowed and hasattr(builtins, head):
                self.module_imports.add("builtins")
                return "builtins." + word
            if head in ("None", "True", "False") or hasattr(builtins, head):
                return word
            owner, real = self._resolve(head, home)
            self.imports.setdefault(owner, set()).add((real, head))
            return word

        return IDENTIFIER.sub(swap, text)

    # ---- classes --------------------------------------------------------------------------------

    def signature(self, function: Any, home: str, *, make_async: bool, shadowed: frozenset[str] = frozenset()) -> str:
        sig = inspect.signature(function)
        params = []
        seen_keyword_only = False
        for param in sig.parameters.values():
            text = param.name
            if param.kind is param.VAR_POSITIONAL:
                text = "*" + text
                seen_keyword_only = True
            elif param.kind is param.VAR_KEYWORD:
                text = "**" + text
            elif param.kind is param.KEYWORD_ONLY and not seen_keyword_only:
                params.append("*")
                seen_keyword_only = True
            if param.annotation is not param.empty:
                text += ": " + self.annotation(str(param.annotation), home, shadowed)
            if param.default is not param.empty:
                text += " = ..."
            params.append(text)
        returns = ("None" if sig.return_annotation is sig.empty
                   else self.annotation(str(sig.return_annotation), home, shadowed))
        prefix = "async def" if make_async else "def"
        line = f"{prefix} {function.__name__}({', '.join(params)}) -> {returns}: ..."
        if len(line) <= LINE - 4:
            return line
        inner = "".join(f"\n        {param}," for param in params)
        return f"{prefix} {function.__name__}({inner}\n    ) -> {returns}: ..."

    def attributes(self, sync_class: type, shadowed: frozenset[str]) -> dict[str, str]:
        """The public attributes the sync ``__init__`` sets, with their types where the code says them:
        ``self.x: T = ...``, ``self.x = <TwinnedClass>(...)`` (the twin), ``self.x = <parameter>`` (its
        annotation), ``self.x = "" / 0 / False / 0.0``. Others stay ``Any`` (``AsyncTwin.__getattr__``)."""
        found: dict[str, str] = {}
        init = sync_class.__dict__.get("__init__")
        if init is None:
            return found
        home = sync_class.__module__
        params = {name: str(p.annotation) for name, p in inspect.signature(init).parameters.items()
                  if p.annotation is not p.empty}
        literal_types = {str: "str", int: "int", bool: "bool", float: "float"}
        for node in ast.walk(ast.parse(textwrap.dedent(inspect.getsource(init)))):
            targets: list[ast.expr] = []
            kind: str | None = None
            if isinstance(node, ast.AnnAssign):
                targets, kind = [node.target], ast.unparse(node.annotation)
            elif isinstance(node, ast.Assign):
                targets = node.targets
                value = node.value
                if isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id in self.twin_names:
                    kind = value.func.id
                elif isinstance(value, ast.Name) and value.id in params:
                    kind = params[value.id]
                elif isinstance(value, ast.Constant) and type(value.value) in literal_types:
                    kind = literal_types[type(value.value)]
            for target in targets:
                if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) \
                        and target.value.id == "self" and not target.attr.startswith("_") and kind is not None:
                    found.setdefault(target.attr, self.annotation(kind, home, shadowed))
        return found

    def twin_class(self, twin: type[aio.AsyncTwin]) -> list[str]:
        sync_class = twin.twin_of
        home = sync_class.__module__
        lines = [f"class {twin.__name__}(AsyncTwin):"]
        members = set(aio.public_methods(sync_class)) | set(twin.__dict__)
        shadowed = frozenset(name for name in members if hasattr(builtins, name))
        doc = (twin.__doc__ or "").strip().splitlines()
        if doc and twin.__doc__ != aio.AsyncTwin.__doc__:
            lines.append(f'    """{doc[0]}"""' if len(doc) == 1 else f'    """{doc[0]} ..."""')
        properties = {name for name in dir(sync_class) if isinstance(inspect.getattr_static(sync_class, name), property)}
        for attr, kind in sorted(self.attributes(sync_class, shadowed).items()):
            if attr not in properties and attr not in twin.__dict__:
                lines.append(f"    {attr}: {kind}")
        for name in sorted(dir(sync_class)):
            if name.startswith("_"):
                continue
            attribute = inspect.getattr_static(sync_class, name)
            if isinstance(attribute, property) and attribute.fget is not None and name not in twin.__dict__:
                lines += ["    @property", "    " + self.signature(attribute.fget, home, make_async=False, shadowed=shadowed)]
        own = {name: value for name, value in twin.__dict__.items()
               if (inspect.isfunction(value) or isinstance(value, property)) and name != "__init_subclass__"}
        methods = aio.public_methods(sync_class)
        for name in methods:
            if name in own:  # the twin's own (AsyncAGB.close): already a coroutine
                lines.append("    " + self.signature(own[name], aio.__name__, make_async=True, shadowed=shadowed))
                continue
            source = inspect.getattr_static(sync_class, name)
            if isinstance(source, (staticmethod, classmethod)):
                source = source.__func__
            lines.append("    " + self.signature(source, home, make_async=True, shadowed=shadowed))
        for name, value in sorted(own.items()):
            if name in methods or (name.startswith("_") and not name.startswith("__")):
                continue
            if isinstance(value, property):
                if value.fget is not None:
                    lines += ["    @property", "    " + self.signature(value.fget, aio.__name__, make_async=False,
                                                                     shadowed=shadowed)]
            else:
                lines.append("    " + self.signature(value, aio.__name__, make_async=inspect.iscoroutinefunction(value),
                                                     shadowed=shadowed))
        if len(lines) == 1:
            lines.append("    pass")
        return lines

    def render(self) -> str:
        body: list[str] = [
            "class AsyncTwin:",
            '    """The awaitable twin of one sync object: plain attributes read through to it."""',
            "    @property",
            "    def sync_object(self) -> Any: ...",
            "    def __getattr__(self, name: str) -> Any: ...",
            "",
            "class AsyncSessionResult(SessionResult):",
            '    """A ``SessionResult`` whose session is an ``AsyncSession`` (a name for type checkers only)."""',
            "    session: AsyncSession | None  # type: ignore[assignment]",
            "",
        ]
        self.imports.setdefault("agbox.client.results", set()).add(("SessionResult", "SessionResult"))
        self.imports.setdefault("typing", set()).add(("Any", "Any"))
        for twin in aio._TWINS.values():
            body += self.twin_class(twin)
            body.append("")
        head = ['"""Static types of the async SDK, generated by ``python -m agbox.client.aio_stubgen`` from the',
                'sync classes: do not edit by hand (see that module)."""', "",
                "from __future__ import annotations", ""]
        for module in sorted(self.module_imports):
            head.append(f"import {module}")
        for module, names in sorted(self.imports.items()):
            shown = sorted(real if real == alias else f"{real} as {alias}" for real, alias in names)
            line = f"from {module} import {', '.join(shown)}"
            if len(line) > LINE:
                line = f"from {module} import (" + "".join(f"\n    {name}," for name in shown) + "\n)"
            head.append(line)
        return "\n".join([*head, "", "", *body]).rstrip("\n") + "\n"


def main() -> None:
    sys.stdout.write(Stub().render())


if __name__ == "__main__":
    main()
