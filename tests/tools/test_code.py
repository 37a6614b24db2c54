"""run_code through our SDK, over HTTP and embedded: state, rich outputs, languages, errors, timeouts,
streaming and cancel. Real sandboxes, real interpreters."""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.conftest import wait_for
from tests.server.test_official_code import DISPLAY_FORMS, check_display_forms

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def session(make_session: Callable[..., Any]) -> Any:
    return make_session()


def test_python_keeps_state_between_runs(session: Any) -> None:
    first = session.code.run("x = 21\nprint('set')", "python")
    assert first.success, first.error_message
    assert first.logs.stdout == ["set\n"]
    assert first.results == []
    second = session.code.run("x * 2", "python")
    assert second.success, second.error_message
    assert second.result == "42"
    assert second.results[0].is_main_result
    assert second.execution_count == first.execution_count + 1
    assert second.execution_time >= 0
    # Aliases are accepted like the official SDK's.
    assert session.code.run("x", "py").result == "21"


def test_matplotlib_figure_is_an_inline_png(session: Any) -> None:
    result = session.code.run(
        "import matplotlib.pyplot as plt\nplt.plot([1, 4, 9])\nplt.title('squares')\nplt.show()\nprint('drawn')",
        "python", timeout_s=60)
    assert result.success, result.error_message
    pngs = [item.png for item in result.results if item.png]
    assert len(pngs) == 1
    assert base64.b64decode(pngs[0]).startswith(PNG_MAGIC)
    assert result.logs.stdout == ["drawn\n"]
    # A figure left open (no show()) is captured at the end of the run too.
    again = session.code.run("fig = plt.figure()\n_ = plt.bar([1, 2], [3, 4])", "python")
    assert [base64.b64decode(i.png)[:8] for i in again.results if i.png] == [PNG_MAGIC]


def test_pandas_dataframe_is_an_html_table(session: Any) -> None:
    result = session.code.run("import pandas as pd\npd.DataFrame({'a': [1, 2], 'b': ['x', 'y']})", "python")
    assert result.success, result.error_message
    main = next(item for item in result.results if item.is_main_result)
    assert main.html is not None and "<table" in main.html and "<td>x</td>" in main.html
    assert main.text is not None and "a" in main.text


def test_rich_reprs_and_display(session: Any) -> None:
    code = (
        "class Rich:\n"
        "    def _repr_markdown_(self): return '**bold**'\n"
        "    def _repr_latex_(self): return r'$x^2$'\n"
        "    def _repr_svg_(self): return '<svg xmlns=\"http://www.w3.org/2000/svg\"></svg>'\n"
        "    def _repr_json_(self): return {'k': [1, 2]}\n"
        "display('shown first')\n"
        "Rich()"
    )
    result = session.code.run(code, "python")
    assert result.success, result.error_message
    shown, main = result.results
    assert shown.text == "'shown first'" and not shown.is_main_result
    assert main.is_main_result
    assert (main.markdown, main.latex, main.json) == ("**bold**", "$x^2$", {"k": [1, 2]})
    assert main.svg is not None and main.svg.startswith("<svg")


def test_python_error_result(session: Any) -> None:
    result = session.code.run("print('before')\ndef f():\n    return undefined_name\nf()", "python")
    assert not result.success
    assert result.error is not None
    assert result.error.name == "NameError"
    assert "undefined_name" in result.error.value
    # IPython's traceback, as a notebook shows it (no terminal colours).
    trace = result.error.traceback
    assert trace.startswith("-----") and "Traceback (most recent call last)" in trace
    assert f"Cell In [{result.execution_count}], line 4" in trace and "----> 3     return undefined_name" in trace
    assert trace.rstrip().endswith("NameError: name 'undefined_name' is not defined") and "\x1b[" not in trace
    assert "NameError" in result.error_message
    assert result.logs.stdout == ["before\n"]
    # The session is still usable.
    assert session.code.run("1 + 1", "python").result == "2"


def test_syntax_error_and_usage_error(session: Any) -> None:
    broken = session.code.run("x = (1,\nprint(x", "python")
    assert not broken.success and broken.error is not None
    assert broken.error.name == "SyntaxError" and "Cell In [" in broken.error.traceback
    magic = session.code.run("%timeit -z pass", "python")
    assert not magic.success and magic.error is not None and magic.error.name == "UsageError"


def test_matplotlib_magic_and_exit(session: Any) -> None:
    # Any %matplotlib settles on the inline backend (a sandbox has no GUI); figures still come back as PNG.
    plotted = session.code.run("kept = 1\n%matplotlib qt\nimport matplotlib.pyplot as plt\nplt.plot([3, 1])\nNone",
                               "python")
    assert plotted.success, plotted.error_message
    assert "Using inline instead" in "".join(plotted.logs.stdout)
    assert [base64.b64decode(item.png)[:8] for item in plotted.results if item.png] == [PNG_MAGIC]
    # exit() ends the interpreter like a notebook kernel's: the next run starts a fresh one.
    assert session.code.run("exit()", "python").success
    fresh = session.code.run("'kept' in globals()", "python")
    assert fresh.success, fresh.error_message
    assert fresh.result == "False"


def test_ipython_display_forms(session: Any) -> None:
    result = session.code.run(DISPLAY_FORMS, "python", timeout_s=60)
    assert result.success, result.error_message
    check_display_forms(result.results)
    # get_ipython() is the shell; Out/_N keep the results under the counts the SDK reports.
    numbered = session.code.run(f"type(get_ipython()).__name__, Out[{result.execution_count}].__class__.__name__",
                                "python")
    assert numbered.result == "('AgentShell', 'Chart')"


def test_first_run_timeout_counts_from_a_ready_interpreter(make_session: Callable[..., Any]) -> None:
    # The deadline covers the user's code, not IPython's start-up (~0.35 s of CPU), which the sleep plus start-up exceed.
    session = make_session()
    result = session.code.run("import time\ntime.sleep(0.75)\n'slept'", "python", timeout_s=1)
    assert result.success, result.error_message
    assert result.result == "'slept'"


def test_timeout_interrupts_a_shell_line(session: Any) -> None:
    assert session.code.run("kept = 7", "python").success
    started = time.monotonic()
    result = session.code.run("!sleep 30\nprint('after')", "python", timeout_s=1)
    assert time.monotonic() - started < 10
    assert not result.success and result.error is not None and result.error.name == "TimeoutError"
    assert session.code.run("kept", "python").result == "7"


def test_timeout_interrupts_and_the_session_survives(session: Any) -> None:
    assert session.code.run("kept = 'still here'", "python").success
    started = time.monotonic()
    result = session.code.run("import time\nwhile True:\n    time.sleep(0.05)", "python", timeout_s=1)
    assert time.monotonic() - started < 10
    assert not result.success
    assert result.error is not None and result.error.name == "TimeoutError"
    after = session.code.run("kept", "python")
    assert after.success and after.result == "'still here'"


def test_javascript(session: Any) -> None:
    result = session.code.run("const xs = [1, 2, 3];\nconsole.log(xs.map(x => x * 2).join(','));", "javascript")
    assert result.success, result.error_message
    assert result.logs.stdout == ["2,4,6\n"]
    failed = session.code.run("console.log('a'); nope();", "js")
    assert not failed.success
    assert failed.error is not None and failed.error.name == "ReferenceError"
    assert failed.logs.stdout == ["a\n"]
    assert failed.error.traceback.startswith("ReferenceError: nope is not defined\n    at Cell")
    assert "node:" not in failed.error.traceback


def test_javascript_is_stateful_like_a_repl(session: Any) -> None:
    js = session.code
    first = js.run("const base = 40;\nfunction add(n) { return base + n }\nlet calls = 0", "javascript")
    assert first.success, first.error_message
    assert first.results == []  # declarations have no value
    second = js.run("calls += 1;\nadd(2)", "javascript")
    assert second.success, second.error_message
    assert second.result == "42" and second.results[0].is_main_result
    assert second.execution_count == first.execution_count + 1
    # Top-level await, require, and the last expression's value as util.inspect shows it.
    awaited = js.run("const os = require('os');\nconst v = await new Promise(r => setTimeout(() => r(calls), 20));\n"
                     "({ v, type: typeof os.cpus })", "js")
    assert awaited.success, awaited.error_message
    assert awaited.result == "{ v: 1, type: 'function' }"
    again = js.run("const base = 1", "javascript")
    assert not again.success and again.error is not None and again.error.name == "SyntaxError"
    assert "'base' has already been declared" in again.error.value
    # An ES module (static import) runs on its own, as before.
    module = js.run("import { platform } from 'os';\nconsole.log(platform())", "javascript")
    assert module.success, module.error_message
    assert module.logs.stdout == ["linux\n"]


def test_javascript_timeout_stream_and_cancel(session: Any) -> None:
    js = session.code
    assert js.run("let spins = 0", "javascript").success
    started = time.monotonic()
    busy = js.run("while (true) { spins++ }", "javascript", timeout_s=1)
    assert time.monotonic() - started < 10
    assert not busy.success and busy.error is not None and busy.error.name == "TimeoutError"
    waiting = js.run("await new Promise(() => {})", "javascript", timeout_s=1)
    assert not waiting.success and waiting.error is not None and waiting.error.name == "TimeoutError"
    after = js.run("spins > 0", "javascript")
    assert after.success and after.result == "true"  # interrupted, not restarted: the state is kept

    chunks: list[str] = []
    handle = js.stream("for (let i = 0; ; i++) { console.log('tick', i); await new Promise(r => setTimeout(r, 20)) }",
                       "javascript", timeout_s=60, on_stdout=chunks.append)
    wait_for(lambda: len(chunks) >= 3, 20, what="streamed console.log chunks")
    handle.cancel()
    cancelled = handle.wait()
    assert not cancelled.success and "cancelled" in cancelled.error_message
    assert "".join(chunks).startswith("tick 0\ntick 1\n")
    assert js.run("spins > 0", "javascript").result == "true"


def test_r(session: Any) -> None:
    result = session.code.run("x <- c(1, 2, 3)\ncat(sum(x), '\\n')", "r")
    assert result.success, result.error_message
    assert result.logs.stdout == ["6 \n"]
    failed = session.code.run("stop('broken')", "R")
    assert not failed.success and failed.error is not None and failed.error.value == "broken"


def test_unsupported_language(session: Any) -> None:
    result = session.code.run("x", "cobol")
    assert not result.success
    assert result.error_message == "Unsupported language: cobol. Supported languages are java, javascript, python, r"


def test_stream_chunks_arrive_while_running(session: Any) -> None:
    chunks: list[str] = []
    seen_before_end = threading.Event()

    def on_stdout(chunk: str) -> None:
        chunks.append(chunk)
        if "tick 2" in "".join(chunks):
            seen_before_end.set()

    code = "import time\nfor i in range(5):\n    print('tick', i, flush=True)\n    time.sleep(0.05)\n'done'"
    result = session.code.run(code, "python", stream_beta=True, on_stdout=on_stdout)
    assert result.success, result.error_message
    assert seen_before_end.is_set()
    assert "".join(result.logs.stdout) == "".join(f"tick {i}\n" for i in range(5))
    assert len(result.logs.stdout) >= 5  # streamed as produced, not in one piece at the end
    assert result.result == "'done'"
    assert result.execution_count is not None


def test_stream_cancel_interrupts_and_the_session_survives(session: Any) -> None:
    chunks: list[str] = []
    handle = session.code.stream("import time\nn = 0\nwhile True:\n    n += 1\n    print(n, flush=True)\n"
                                 "    time.sleep(0.02)", "python", timeout_s=60, on_stdout=chunks.append)
    wait_for(lambda: len(chunks) >= 3, 20, what="streamed stdout chunks")
    started = time.monotonic()
    handle.cancel()
    result = handle.wait()
    assert time.monotonic() - started < 10
    assert not result.success
    assert "cancelled" in result.error_message
    # The interpreter stopped the loop (the next run can only start then) and kept its state.
    first = session.code.run("n", "python")
    assert first.success, first.error_message
    assert int(session.code.run("n", "python").result) == int(first.result)


def test_stream_errors(session: Any) -> None:
    errors: list[Any] = []
    result = session.code.run("raise ValueError('bad value')", "python", stream_beta=True, on_error=errors.append)
    assert not result.success
    assert result.error is not None and result.error.name == "ValueError" and result.error.value == "bad value"
    assert errors and errors[0]["code"] == "ValueError"
