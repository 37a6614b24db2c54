"""The persistent Python interpreter behind ``run_code`` (one per session). Stdlib only.

Started by ops_code as ``/usr/bin/python3 -u code_worker.py REQ_FD RESP_FD``. It reads one JSON
request per line from REQ_FD (``{"code": str, "count": int}``), runs the code in one namespace
that lives as long as the process, and writes JSON lines to RESP_FD: ``{"type": "display",
"data": {mime: value}}`` for each rich output as it is produced (``display()``, ``plt.show()``,
open figures after the run) and finally ``{"type": "done", "main": bundle|None, "error":
{name, value, traceback}|None}``. The code's stdout and stderr are this process's own fds 1 and
2, which the agent streams. SIGINT interrupts running code (KeyboardInterrupt) and is ignored
between runs.
"""

from __future__ import annotations

import ast
import base64
import builtins
import importlib.abc
import importlib.machinery
import importlib.util
import json
import linecache
import os
import signal
import sys
import threading
import traceback
import types
from typing import Any

MPL_BACKEND = "agbox_inline_backend"
_REPR_METHODS = (
    ("_repr_html_", "text/html"),
    ("_repr_markdown_", "text/markdown"),
    ("_repr_svg_", "image/svg+xml"),
    ("_repr_png_", "image/png"),
    ("_repr_jpeg_", "image/jpeg"),
    ("_repr_latex_", "text/latex"),
    ("_repr_json_", "application/json"),
)
_BINARY_MIMES = ("image/png", "image/jpeg")


class Worker:
    def __init__(self, resp_fd: int) -> None:
        self._resp = os.fdopen(resp_fd, "wb", buffering=0)
        self._resp_lock = threading.Lock()
        self.executing = False
        self.namespace: dict[str, Any] = {"__name__": "__main__", "__builtins__": builtins}

    def send(self, message: dict[str, Any]) -> None:
        line = json.dumps(message, ensure_ascii=False, default=str).encode("utf-8", "surrogateescape") + b"\n"
        with self._resp_lock:
            self._resp.write(line)

    # ---- rich output -------------------------------------------------------------------------

    def bundle(self, obj: Any) -> dict[str, Any]:
        data: dict[str, Any] = {}
        if not isinstance(obj, type):
            mimebundle = getattr(obj, "_repr_mimebundle_", None)
            if callable(mimebundle):
                try:
                    value = mimebundle()
                except Exception:
                    value = None
                if isinstance(value, tuple):
                    value = value[0]
                if isinstance(value, dict):
                    data.update(value)
            for attr, mime in _REPR_METHODS:
                method = getattr(obj, attr, None)
                if mime in data or not callable(method):
                    continue
                try:
                    value = method()
                except Exception:  # noqa: S112 - a broken _repr_ must not hide the others
                    continue
                if isinstance(value, tuple):
                    value = value[0]
                if value is not None:
                    data[mime] = value
            png = self._figure_png(obj)
            if png is not None:
                data.setdefault("image/png", png)
        for mime in _BINARY_MIMES:
            if isinstance(data.get(mime), (bytes, bytearray)):
                data[mime] = base64.b64encode(data[mime]).decode("ascii")
        clean: dict[str, Any] = {}
        for mime, value in data.items():
            try:
                json.dumps(value)
            except (TypeError, ValueError):
                continue
            clean[mime] = value
        if "text/plain" not in clean:
            try:
                clean["text/plain"] = repr(obj)
            except Exception as exc:
                clean["text/plain"] = f"<unrepresentable {type(obj).__name__}: {exc}>"
        return clean

    @staticmethod
    def _figure_png(obj: Any) -> str | None:
        figure_module = sys.modules.get("matplotlib.figure")
        if figure_module is None or not isinstance(obj, figure_module.Figure):
            return None
        import io

        buffer = io.BytesIO()
        obj.savefig(buffer, format="png", bbox_inches="tight")
        return base64.b64encode(buffer.getvalue()).decode("ascii")

    def display(self, *objects: Any, **_: Any) -> None:
        for obj in objects:
            self.send({"type": "display", "data": self.bundle(obj)})

    def flush_figures(self) -> None:
        pyplot = sys.modules.get("matplotlib.pyplot")
        if pyplot is None:
            return
        for number in pyplot.get_fignums():
            figure = pyplot.figure(number)
            png = self._figure_png(figure)
            if png is not None:
                self.send({"type": "display", "data": {"image/png": png, "text/plain": repr(figure)}})
        pyplot.close("all")

    # ---- execution ------------------------------------------------------------------------------

    def run(self, code: str, count: int) -> None:
        filename = f"<cell-{count}>"
        linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
        main: dict[str, Any] | None = None
        error: dict[str, str] | None = None
        try:
            tree = ast.parse(code, filename, "exec")
            last: ast.Expression | None = None
            if tree.body and isinstance(tree.body[-1], ast.Expr) and not code.rstrip().endswith(";"):
                last = ast.Expression(tree.body.pop().value)
            value = None
            self.executing = True
            try:
                exec(compile(tree, filename, "exec"), self.namespace)  # noqa: S102
                if last is not None:
                    value = eval(compile(last, filename, "eval"), self.namespace)  # noqa: S307
            finally:
                self.executing = False
            self.flush_figures()
            if value is not None:
                self.namespace["_"] = value
                main = self.bundle(value)
        except BaseException as exc:  # the user's code may raise anything, SystemExit included
            self.executing = False
            error = self._error(exc)
            try:
                self.flush_figures()
            except Exception as figure_error:
                print(f"[agbox: could not render figures: {figure_error}]", file=sys.stderr)
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        self.send({"type": "done", "main": main, "error": error})

    @staticmethod
    def _error(exc: BaseException) -> dict[str, str]:
        frames = traceback.extract_tb(exc.__traceback__)
        # Drop this file's own frames so the traceback starts at the user's code.
        keep = [f for f in frames if f.filename != __file__]
        lines = ["Traceback (most recent call last):\n", *traceback.format_list(keep)] if keep else []
        lines += traceback.format_exception_only(type(exc), exc)
        return {"name": type(exc).__name__, "value": str(exc), "traceback": "".join(lines)}


class _InlineBackend(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """A matplotlib backend (Agg canvas) whose ``show()`` sends figures as image/png outputs."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        return importlib.util.spec_from_loader(fullname, self) if fullname == MPL_BACKEND else None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        return None

    def exec_module(self, module: types.ModuleType) -> None:
        from matplotlib.backend_bases import FigureManagerBase
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        worker = self.worker
        module.FigureCanvas = FigureCanvasAgg  # type: ignore[attr-defined]
        module.FigureManager = FigureManagerBase  # type: ignore[attr-defined]
        module.show = lambda *args, **kwargs: worker.flush_figures()  # type: ignore[attr-defined]


def _on_sigint(worker: Worker) -> Any:
    def handler(signum: int, frame: Any) -> None:
        if worker.executing:
            raise KeyboardInterrupt
    return handler


def main() -> None:
    req_fd, resp_fd = int(sys.argv[1]), int(sys.argv[2])
    worker = Worker(resp_fd)
    signal.signal(signal.SIGINT, _on_sigint(worker))
    sys.meta_path.append(_InlineBackend(worker))
    os.environ["MPLBACKEND"] = "module://" + MPL_BACKEND
    builtins.display = worker.display  # type: ignore[attr-defined]
    # Like a notebook: imports resolve from the working directory, not from the agent's own dir.
    sys.path[0] = ""
    sys.argv = [""]
    requests = os.fdopen(req_fd, "rb", buffering=0)
    for line in requests:
        try:
            request = json.loads(line)
        except ValueError:
            continue
        worker.run(str(request.get("code", "")), int(request.get("count", 0)))


if __name__ == "__main__":
    main()
