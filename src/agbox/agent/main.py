"""agbox in-sandbox agent. Stdlib only; runs as the sandbox user inside the namespaces.

Protocol: one JSON object per line on stdin, ``{"id": int, "op": str, "args": {...}}``; one JSON
object per line on stdout, ``{"id": int, "ok": true, "result": ...}`` or
``{"id": int, "ok": false, "error": {"kind": str, "message": str}}``. Requests run concurrently,
each in its own thread, so a long command does not block a file read. An op may emit
``{"id": int, "event": {...}}`` lines before its answer (streamed output). ``{"op": "cancel",
"args": {"target": id}}`` cancels a running request.
"""

from __future__ import annotations

# The agent starts in every sandbox, so its imports are part of every sandbox start's CPU: no ``json``
# (its import pulls in ``re`` and ``enum``, about as much CPU as the interpreter's own start), no
# ``threading`` (``functools``, ``collections``) and no ``typing`` at run time. The JSON lines go through
# ``_json``, the C codec that ``json`` itself uses; threads and locks come from ``_thread``. Op modules that
# need ``threading`` import it in a request thread, which CPython allows (bpo-1596321).
import _json
import _thread
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import Ctx, OpError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable

OPS: dict[str, Callable[[dict[str, Any], Ctx], Any]] = {}
RUNNING: dict[Any, Ctx] = {}
_running_lock = _thread.allocate_lock()
_out_lock = _thread.allocate_lock()
_stdout = sys.stdout.buffer


def _unencodable(value: object) -> object:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _encode(obj: dict[str, Any]) -> str:
    """json.dumps(obj, separators=(",", ":")): ASCII output, circular references detected (a fresh
    markers dict per call, as json.dumps makes: threads send at the same time), NaN allowed."""
    encoder = _json.make_encoder({}, _unencodable, _json.encode_basestring_ascii, None, ":", ",", False, False, True)
    return "".join(encoder(obj, 0))


class _DecodeOptions:
    """The settings json.loads hands its C scanner (strict strings, plain dicts, floats and ints)."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = float  # NaN, Infinity, -Infinity


_scan = _json.make_scanner(_DecodeOptions())


def decode(line: bytes) -> Any:
    """One JSON value from a request line, as json.loads would give it; ValueError if it is not one."""
    text = line.decode("utf-8").strip()
    try:
        value, end = _scan(text, 0)
    except StopIteration:
        raise ValueError("no JSON value") from None
    if end != len(text):
        raise ValueError("extra data after the JSON value")
    return value


def send(obj: dict[str, Any]) -> None:
    data = _encode(obj).encode("ascii") + b"\n"
    with _out_lock:
        _stdout.write(data)
        _stdout.flush()


def _ping(args: dict[str, Any], ctx: Ctx) -> dict[str, Any]:
    return {"pid": os.getpid(), "uid": os.getuid()}


# Op modules load on first use (by op-name prefix): the agent starts in about a third of the time and
# an idle sandbox that never touches files or code keeps a small heap.
OP_MODULES = (("shell", "ops_shell"), ("fs_", "ops_files"), ("archive_", "ops_archive"), ("run_code", "ops_code"),
              ("browser_", "ops_browser"), ("pty_", "ops_pty"), ("desktop_", "ops_desktop"))
_import_lock = _thread.allocate_lock()


def _register_all() -> None:
    OPS["ping"] = _ping


def _find_op(name: str) -> Callable[[dict[str, Any], Ctx], Any] | None:
    op = OPS.get(name)
    if op is not None:
        return op
    for prefix, module_name in OP_MODULES:
        if name.startswith(prefix):
            with _import_lock:
                try:
                    module = __import__(module_name)
                except ImportError:
                    return None
                OPS.update(getattr(module, "OPS", {}))
            return OPS.get(name)
    return None


def _start_desktop(size: str) -> None:
    _find_op("desktop_screen_size")  # imports and registers the desktop ops
    import ops_desktop

    ops_desktop.start_desktop(size)


def _handle(request: dict[str, Any]) -> None:
    rid = request.get("id")
    op = _find_op(str(request.get("op")))
    if op is None:
        send({"id": rid, "ok": False, "error": {"kind": "unknown_op", "message": f"unknown op {request.get('op')!r}"}})
        return
    ctx = Ctx(rid, lambda event: send({"id": rid, "event": event}))
    with _running_lock:
        RUNNING[rid] = ctx
    try:
        args = request.get("args") or {}
        if not isinstance(args, dict):
            raise OpError("invalid", "args must be an object")
        send({"id": rid, "ok": True, "result": op(args, ctx)})
    except OpError as exc:
        send({"id": rid, "ok": False, "error": {"kind": exc.kind, "message": exc.message}})
    except OSError as exc:
        where = f": {exc.filename}" if exc.filename else ""
        send({"id": rid, "ok": False, "error": {"kind": "os", "errno": exc.errno, "message": f"{exc.strerror or exc}{where}"}})
    except Exception as exc:  # the top-level handler of a request thread: report, never die
        import traceback

        # The message reaches the agent's user: what failed, not which Python class (the trace is for logs).
        send({"id": rid, "ok": False, "error": {"kind": "internal",
                                                 "message": f"{request.get('op')} failed inside the sandbox: {exc}",
                                                 "trace": traceback.format_exc()}})
    finally:
        with _running_lock:
            RUNNING.pop(rid, None)


def main() -> None:
    _register_all()
    os.umask(0o022)
    send({"id": 0, "ok": True, "result": {"ready": True, "pid": os.getpid()}})
    # Most sessions run a command first: load the shell op behind the ready signal, not in front of it.
    _thread.start_new_thread(_find_op, ("shell",))
    desktop_size = os.environ.get("AGBOX_DESKTOP_SIZE")
    if desktop_size:
        # A computer-use sandbox starts its desktop right away (in the warm pool, before any session
        # holds it); desktop ops wait for it to be ready.
        _thread.start_new_thread(_start_desktop, (desktop_size,))
    for line in sys.stdin.buffer:
        if not line.strip():
            continue
        try:
            request = decode(line)
        except ValueError:
            send({"id": None, "ok": False, "error": {"kind": "invalid", "message": "malformed request line"}})
            continue
        if request.get("op") == "cancel":
            with _running_lock:
                target = RUNNING.get((request.get("args") or {}).get("target"))
            if target is not None:
                target.cancel()
            continue
        try:
            _thread.start_new_thread(_handle, (request,))
        except RuntimeError as exc:  # no thread to be had (the sandbox's process limit): answer, never die
            send({"id": request.get("id"), "ok": False,
                  "error": {"kind": "os", "errno": 11, "message": f"the agent could not start the request: {exc}"}})


if __name__ == "__main__":
    main()
