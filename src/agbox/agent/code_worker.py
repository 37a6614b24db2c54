"""The persistent Python interpreter behind ``run_code`` (one per session): IPython's InteractiveShell.

Started by ops_code as ``/usr/bin/python3 -u code_worker.py REQ_FD RESP_FD`` (IPython is the sandbox's
Debian ``python3-ipython``; the agent itself stays stdlib-only and never imports this file). Cells run
like in a notebook: magics (``%timeit``, ``%%writefile``), ``!shell`` lines, ``display()`` and the
``IPython.display`` classes, ``_repr_*_`` / ``_repr_mimebundle_`` objects, matplotlib figures through
``matplotlib_inline`` (PNG), the last expression as the result, IPython tracebacks.

Protocol: after start-up the worker writes ``{"type": "ready"}`` to RESP_FD; then it reads one JSON
request per line from REQ_FD (``{"code": str, "count": int}``) and answers with JSON lines on RESP_FD:
``{"type": "display", "data": {mime: value}}`` for each output published while the cell runs and
finally ``{"type": "done", "main": bundle|None, "error": {name, value, traceback}|None, "exiting": bool}``
(``exiting`` after ``exit()``: the worker ends, the next run starts a fresh one). The cell's
stdout and stderr are this process's own fds 1 and 2 (``!cmd`` children write there directly), which the
agent streams. SIGINT interrupts a running cell (KeyboardInterrupt) and is ignored otherwise.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import sys
import threading
from typing import Any

# Until a cell runs, an interrupt (a timeout during start-up) must not kill the interpreter half-built.
signal.signal(signal.SIGINT, signal.SIG_IGN)
# Figures go through IPython's own inline backend (PNG outputs, open figures flushed after each cell).
os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"

# The worker never completes code, and IPython's completer imports jedi (a tenth of IPython's start-up)
# only when it can: hide it during the import, then give it back to the user's own imports.
_jedi_hidden = "jedi" not in sys.modules
if _jedi_hidden:
    sys.modules["jedi"] = None  # type: ignore[assignment]
try:
    from IPython.core.displayhook import DisplayHook
    from IPython.core.displaypub import DisplayPublisher
    from IPython.core.error import UsageError
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config import Config
finally:
    if _jedi_hidden:
        del sys.modules["jedi"]


class Channel:
    """JSON lines to the agent; display() may be called from the user's threads."""

    def __init__(self, fd: int) -> None:
        self._out = os.fdopen(fd, "wb", buffering=0)
        self._lock = threading.Lock()

    def send(self, message: dict[str, Any]) -> None:
        line = json.dumps(message, ensure_ascii=False, default=str).encode("utf-8", "surrogateescape") + b"\n"
        with self._lock:
            self._out.write(line)


def wire_bundle(data: dict[str, Any]) -> dict[str, Any]:
    """A mime bundle as JSON: binary values (PNG, JPEG, PDF) base64, values JSON cannot carry dropped."""
    clean: dict[str, Any] = {}
    for mime, value in data.items():
        if isinstance(value, (bytes, bytearray, memoryview)):
            value = base64.b64encode(bytes(value)).decode("ascii")
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            continue
        clean[str(mime)] = value
    return clean


class AgentDisplayPublisher(DisplayPublisher):
    """``display()`` and friends: each output goes to the agent as it is produced."""

    channel: Channel

    def publish(self, data: dict[str, Any], metadata: Any = None, source: Any = None, *,
                transient: Any = None, update: bool = False, **kwargs: Any) -> None:
        self.channel.send({"type": "display", "data": wire_bundle(data)})

    def clear_output(self, wait: bool = False) -> None:
        """Outputs already sent cannot be taken back; the base class would print terminal escapes."""


class AgentDisplayHook(DisplayHook):
    """The value of a cell's last expression: kept as the run's main result instead of printed."""

    channel: Channel

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.main: dict[str, Any] | None = None

    def start_displayhook(self) -> None:
        pass

    def write_output_prompt(self) -> None:
        pass

    def write_format_data(self, format_dict: dict[str, Any], md_dict: Any = None) -> None:
        if self.main is not None:
            # More than one displayed expression (e.g. `%config InteractiveShell.ast_node_interactivity='all'`):
            # the earlier ones are plain outputs, the last is the main result.
            self.channel.send({"type": "display", "data": self.main})
        self.main = wire_bundle(format_dict)

    def finish_displayhook(self) -> None:
        pass


class AgentShell(InteractiveShell):
    """InteractiveShell whose outputs, results and tracebacks go to the agent, not to the terminal."""

    displayhook_class = AgentDisplayHook
    display_pub_class = AgentDisplayPublisher

    def __init__(self, channel: Channel, **kwargs: Any) -> None:
        AgentDisplayHook.channel = channel
        AgentDisplayPublisher.channel = channel
        super().__init__(**kwargs)
        self.last_error: dict[str, str] | None = None
        # `!cmd` runs with the worker's own stdout/stderr (the agent's pipes): streamed as it comes and
        # kept apart, where the default (pexpect on a pty) would merge both streams.
        self.system = self.system_raw  # type: ignore[method-assign]
        # Figures can only be shown inline here: `%matplotlib` (any or no backend) settles on inline.
        self.pylab_gui_select = "inline"

    def enable_gui(self, gui: str | None = None) -> None:
        """`%matplotlib inline` (and `%matplotlib` alone) need no event loop; a sandbox has no display for others."""
        if gui not in (None, "inline"):
            raise UsageError(f"no GUI event loop ({gui}) in a sandbox: use `%matplotlib inline`")

    def ask_exit(self) -> None:
        """`exit()` / `quit()`: like a notebook kernel, the interpreter ends after this cell and the next run
        starts a fresh one."""
        self.exit_now = True

    def _showtraceback(self, etype: type[BaseException], evalue: BaseException, stb: Any) -> None:
        self.last_error = {"name": etype.__name__, "value": str(evalue),
                           "traceback": self.InteractiveTB.stb2text(stb)}


def _flush_std() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass


def run_cell(shell: AgentShell, code: str, count: int, running: threading.Event) -> dict[str, Any]:
    hook = shell.displayhook
    assert isinstance(hook, AgentDisplayHook)
    hook.main = None
    shell.last_error = None
    # IPython numbers cells (In/Out, `_N`, "Cell In[N]") with the count the agent reports.
    shell.execution_count = count
    error: dict[str, str] | None = None
    # The agent sends one SIGINT per run, and only while it waits for this answer: an interrupt can
    # land anywhere between set() and clear(), and is caught right here.
    try:
        running.set()
        result = shell.run_cell(code, store_history=True)
        failure = None if result.success else (result.error_before_exec or result.error_in_exec)
    except BaseException as exc:  # an interrupt landing in IPython's own code around the cell
        failure = exc
    running.clear()
    if failure is not None:
        error = shell.last_error or {"name": type(failure).__name__, "value": str(failure), "traceback": ""}
    elif shell.last_error is not None:
        # A traceback shown without failing the cell (a broken post-execute hook, a formatter): keep it visible.
        print(shell.last_error["traceback"], file=sys.stderr)
    _flush_std()
    return {"type": "done", "main": hook.main, "error": error, "exiting": bool(shell.exit_now)}


def main() -> None:
    req_fd, resp_fd = int(sys.argv[1]), int(sys.argv[2])
    channel = Channel(resp_fd)
    # Like a notebook: imports resolve from the working directory, not from the agent's own dir.
    sys.path[0] = ""
    sys.argv = [""]
    config = Config()
    config.HistoryManager.enabled = False  # no history database in the user's home
    config.InteractiveShell.colors = "NoColor"  # tracebacks are read as text, not on a terminal
    # instance(): the singleton that get_ipython() and IPython.display.display() publish through.
    shell = AgentShell.instance(channel=channel, config=config)
    running = threading.Event()

    def on_sigint(signum: int, frame: Any) -> None:
        if running.is_set():
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_sigint)
    channel.send({"type": "ready"})
    requests = os.fdopen(req_fd, "rb", buffering=0)
    for line in requests:
        try:
            request = json.loads(line)
        except ValueError:
            continue
        channel.send(run_cell(shell, str(request.get("code", "")), int(request.get("count", 0)), running))
        if shell.exit_now:
            break


if __name__ == "__main__":
    main()
