"""The async SDK: ``AsyncAGB`` and its async ``Session``, awaitable twins of the sync classes.

Design: a thin facade, not a second client. Every async class here is generated from its sync
class (``AGB``, ``Session`` and each sub-module: command, file, code, browser, computer and its
controllers, pty and its handles, context, file_transfer): for every public method of the sync class
the twin has a coroutine method of the same name and parameters, which runs the sync method in a
thread of the client's own bounded pool and wraps what it returns (a ``Session`` becomes an
``AsyncSession``, a ``SessionResult``'s ``session`` too, a ``PtyHandle`` an ``AsyncPtyHandle``). So
there is one implementation of every wire call (the sync one), and no method can be missing: the
twins are built from the sync classes' method lists when this module is imported.

Costs, said plainly:

- one pool thread per in-flight call: ``AsyncAGB(max_concurrency=N)`` bounds it (default 64); calls
  beyond N wait in the pool's queue, so N is also the client's concurrency limit;
- cancelling the awaiting task does not stop the call: its thread runs it to the end (as the sync
  client would), only the result is dropped;
- ``AsyncAGB(...)`` itself is built synchronously: embedded, that starts the platform (about a
  second, once per data dir), so build it before the event loop gets busy, or in a thread;
- after ``await agb.close()`` every call raises ``RuntimeError("this AsyncAGB client is closed")``
  (its pool is gone), where the closed sync client answers with a failed result;
- the twins are made at import time, so their precise static types live in ``aio_types.pyi``, generated
  from the same sync classes (``python -m agbox.client.aio_stubgen``); ``agbox`` and ``agbox.client`` hand
  type checkers those (importing from this module directly gives ``Any``). Plain attributes
  (``session_id``, ``link_url``, ``pty_id``, ...) read through to the sync object.

Methods that are already coroutines in the sync classes (``browser.initialize_async``,
``browser.screenshot``, ``context.sync``) are awaited as they are, on the caller's loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import functools
import inspect
from pathlib import Path
from typing import Any, ClassVar

from agbox.client.agb import AGB, Config
from agbox.client.browser import Browser
from agbox.client.code import Code, CodeStream
from agbox.client.command import Command
from agbox.client.computer import (
    ApplicationController,
    Computer,
    KeyboardController,
    MouseController,
    ScreenController,
    WindowController,
)
from agbox.client.context import ContextService
from agbox.client.context_manager import ContextManager
from agbox.client.file import FileSystem
from agbox.client.file_transfer import FileTransfer
from agbox.client.pty import Pty, PtyHandle
from agbox.client.results import SessionResult
from agbox.client.session import Session

DEFAULT_MAX_CONCURRENCY = 64
CLOSED = "this AsyncAGB client is closed"

# sync class -> its async twin, filled as the twins are defined below
_TWINS: dict[type, type[AsyncTwin]] = {}


def public_methods(sync_class: type) -> list[str]:
    """The names a twin must offer: every public function of ``sync_class`` (properties excluded)."""
    names = []
    for name in dir(sync_class):
        if name.startswith("_"):
            continue
        attribute = inspect.getattr_static(sync_class, name)
        if isinstance(attribute, (staticmethod, classmethod)):
            attribute = attribute.__func__
        if inspect.isfunction(attribute):
            names.append(name)
    return names


def _unwrap(value: Any) -> Any:
    return value._sync if isinstance(value, AsyncTwin) else value


def _blocking_method(name: str, sync_function: Any) -> Any:
    @functools.wraps(sync_function)
    async def method(self: AsyncTwin, *args: Any, **kwargs: Any) -> Any:
        bound = getattr(self._sync, name)
        call = functools.partial(bound, *[_unwrap(a) for a in args], **{k: _unwrap(v) for k, v in kwargs.items()})
        try:
            pending = asyncio.get_running_loop().run_in_executor(self._pool, call)
        except RuntimeError as exc:  # the pool refuses new work once the client is closed
            raise RuntimeError(CLOSED) from exc
        return self._wrap(await pending)

    return method


def _coroutine_method(name: str, sync_function: Any) -> Any:
    @functools.wraps(sync_function)
    async def method(self: AsyncTwin, *args: Any, **kwargs: Any) -> Any:
        return self._wrap(await getattr(self._sync, name)(*[_unwrap(a) for a in args],
                                                          **{k: _unwrap(v) for k, v in kwargs.items()}))

    return method


class AsyncTwin:
    """The awaitable twin of one sync object; subclasses name their sync class with ``twin_of=``."""

    twin_of: ClassVar[type]
    _sync: Any
    _pool: concurrent.futures.ThreadPoolExecutor

    def __init_subclass__(cls, twin_of: type, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.twin_of = twin_of
        _TWINS[twin_of] = cls
        for name in public_methods(twin_of):
            if name in cls.__dict__:  # the twin defines its own (AsyncAGB.close)
                continue
            function = inspect.getattr_static(twin_of, name)
            if isinstance(function, (staticmethod, classmethod)):
                function = function.__func__
            make = _coroutine_method if inspect.iscoroutinefunction(function) else _blocking_method
            setattr(cls, name, make(name, function))

    @classmethod
    def _of(cls, sync: Any, pool: concurrent.futures.ThreadPoolExecutor) -> Any:
        twin = object.__new__(_TWINS[type(sync)])
        twin._sync = sync
        twin._pool = pool
        return twin

    def _wrap(self, value: Any) -> Any:
        if type(value) in _TWINS:
            return self._of(value, self._pool)
        if isinstance(value, SessionResult) and value.session is not None:
            return dataclasses.replace(value, session=self._of(value.session, self._pool))
        return value

    def __getattr__(self, name: str) -> Any:
        # Only reached for what the class lacks: plain attributes, properties and sub-modules of the
        # sync object (sub-modules come back as twins, built once per twin).
        if name.startswith("__") or name in ("_sync", "_pool"):
            raise AttributeError(name)
        value = getattr(self._sync, name)
        if type(value) not in _TWINS:
            return value
        twin = self._of(value, self._pool)
        object.__setattr__(self, name, twin)
        return twin

    @property
    def sync_object(self) -> Any:
        """The sync object this twin drives (the same state: one client, one session)."""
        return self._sync

    def __repr__(self) -> str:
        return f"<async {self._sync!r}>"


class AsyncSession(AsyncTwin, twin_of=Session):
    """An async ``Session``: every method of the sync one, awaitable; sub-modules are async too."""


class AsyncCommand(AsyncTwin, twin_of=Command):
    pass


class AsyncFileSystem(AsyncTwin, twin_of=FileSystem):
    pass


class AsyncCode(AsyncTwin, twin_of=Code):
    pass


class AsyncCodeStream(AsyncTwin, twin_of=CodeStream):
    pass


class AsyncBrowser(AsyncTwin, twin_of=Browser):
    pass


class AsyncComputer(AsyncTwin, twin_of=Computer):
    pass


class AsyncMouseController(AsyncTwin, twin_of=MouseController):
    pass


class AsyncKeyboardController(AsyncTwin, twin_of=KeyboardController):
    pass


class AsyncWindowController(AsyncTwin, twin_of=WindowController):
    pass


class AsyncApplicationController(AsyncTwin, twin_of=ApplicationController):
    pass


class AsyncScreenController(AsyncTwin, twin_of=ScreenController):
    pass


class AsyncPty(AsyncTwin, twin_of=Pty):
    pass


class AsyncPtyHandle(AsyncTwin, twin_of=PtyHandle):
    """A running terminal: ``on_data`` callbacks still arrive on the reader thread (use
    ``loop.call_soon_threadsafe`` in them to reach the event loop)."""


class AsyncContextManager(AsyncTwin, twin_of=ContextManager):
    pass


class AsyncContextService(AsyncTwin, twin_of=ContextService):
    pass


class AsyncFileTransfer(AsyncTwin, twin_of=FileTransfer):
    pass


class AsyncAGB(AsyncTwin, twin_of=AGB):
    """The async client: ``AGB``'s arguments, plus ``max_concurrency``, the size of its thread pool
    (the most calls in flight at once; more wait their turn). See the module docstring for the design."""

    def __init__(self, api_key: str = "", cfg: Config | None = None, *, endpoint: str | None = None,
                 data_dir: str | Path | None = None, timeout_ms: int | None = None,
                 max_concurrency: int = DEFAULT_MAX_CONCURRENCY) -> None:
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        self._sync = AGB(api_key, cfg, endpoint=endpoint, data_dir=data_dir, timeout_ms=timeout_ms)
        self._pool = concurrent.futures.ThreadPoolExecutor(max_concurrency, thread_name_prefix="agbox-async")

    @property
    def embedded(self) -> bool:
        return bool(self._sync.embedded)

    async def close(self) -> None:
        """Release the connection (embedded: stop the platform once no client uses it), then the pool."""
        try:
            await asyncio.get_running_loop().run_in_executor(self._pool, self._sync.close)
        finally:
            self._pool.shutdown(wait=False)

    async def __aenter__(self) -> AsyncAGB:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
