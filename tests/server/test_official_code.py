"""run_code through the unmodified official SDK (agbcloud-sdk 0.12.0): ``session.code.run`` over the
LinkUrl route, and ``stream_beta=True`` / the raw ``WsClient`` over the session WebSocket."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import pytest

from tests.conftest import wait_for

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"

# Notebook code as users of AGB's and E2B's interpreters write it: every display form IPython knows.
DISPLAY_FORMS = r"""
import io
import matplotlib.pyplot as plt
from IPython.display import HTML, JSON, SVG, Image, Latex, Markdown, display

display(HTML("<b>bold</b>"))
display(Markdown("# Title"))
display(SVG('<svg xmlns="http://www.w3.org/2000/svg" width="4" height="4"></svg>'))
display(Latex(r"$\alpha^2$"))
display(JSON({"k": [1, 2]}))
fig = plt.figure(figsize=(1, 1))
buffer = io.BytesIO()
fig.savefig(buffer, format="jpeg")
plt.close(fig)
display(Image(data=buffer.getvalue(), format="jpeg"))
display({"application/vnd.vegalite.v5+json": {"mark": "point", "data": {"values": [{"x": 1}]}},
         "text/plain": "<VegaLite 5 chart>"}, raw=True)

class Chart:
    def _repr_mimebundle_(self, include=None, exclude=None):
        return {"application/vnd.vegalite.v4+json": {"mark": "bar"}, "text/plain": "<Chart>"}

plt.plot([0, 1], [1, 0])
plt.show()
Chart()
"""


def check_display_forms(results: list[Any]) -> None:
    html, markdown, svg, latex, json_out, jpeg, chart5, png, main = results
    assert html.html == "<b>bold</b>" and not html.is_main_result
    assert markdown.markdown == "# Title"
    assert svg.svg is not None and svg.svg.startswith("<svg")
    assert latex.latex == "$\\alpha^2$"
    assert json_out.json == {"k": [1, 2]}
    assert jpeg.jpeg is not None and base64.b64decode(jpeg.jpeg).startswith(JPEG_MAGIC)
    assert chart5.chart == {"mark": "point", "data": {"values": [{"x": 1}]}} and chart5.text == "<VegaLite 5 chart>"
    assert png.png is not None and base64.b64decode(png.png).startswith(PNG_MAGIC)
    assert main.is_main_result and main.chart == {"mark": "bar"} and main.text == "<Chart>"


def test_state_kept_across_runs(official_session: Any) -> None:
    code = official_session.code
    first = code.run("import math\nradius = 2\nprint('ready')", "python")
    assert first.success, first.error_message
    assert first.logs.stdout == ["ready\n"]
    second = code.run("round(math.pi * radius ** 2, 3)", "python3")
    assert second.success, second.error_message
    assert second.result == "12.566"
    assert second.results[0].is_main_result
    assert isinstance(second.execution_count, int) and second.execution_count == first.execution_count + 1
    assert isinstance(second.execution_time, float)


def test_rich_outputs_matplotlib_png_and_pandas_html(official_session: Any) -> None:
    result = official_session.code.run(
        "import matplotlib.pyplot as plt\nimport pandas as pd\n"
        "plt.plot([0, 1], [1, 0])\nplt.show()\n"
        "pd.DataFrame({'city': ['Oslo', 'Lima'], 'temp': [3, 19]})", "python")
    assert result.success, result.error_message
    pngs = [item.png for item in result.results if item.png]
    assert len(pngs) == 1 and base64.b64decode(pngs[0]).startswith(PNG_MAGIC)
    main = next(item for item in result.results if item.is_main_result)
    assert main.html is not None and "<table" in main.html and "Oslo" in main.html
    assert main.text is not None and "Lima" in main.text


def test_ipython_display_forms_give_their_mime_types(official_session: Any) -> None:
    result = official_session.code.run(DISPLAY_FORMS, "python", timeout_s=60)
    assert result.success, result.error_message
    check_display_forms(result.results)
    # The same outputs as WebSocket result events (the official SDK reads them from "mime").
    streamed = official_session.code.run(DISPLAY_FORMS, "python", timeout_s=60, stream_beta=True)
    assert streamed.success, streamed.error_message
    check_display_forms(streamed.results)


def test_magics_shell_lines_and_ipython_tracebacks(official_session: Any) -> None:
    code = official_session.code
    written = code.run("%%writefile notes.txt\nfirst line\n", "python")
    assert written.success, written.error_message
    assert written.logs.stdout == ["Writing notes.txt\n"]
    shell = code.run("!cat notes.txt\n!echo to-stderr >&2\nlines = !cat notes.txt\nlines", "python")
    assert shell.success, shell.error_message
    assert "".join(shell.logs.stdout) == "first line\n"
    assert "".join(shell.logs.stderr) == "to-stderr\n"
    assert shell.result == "['first line']"
    timed = code.run("%timeit -n 2 -r 2 sum(range(10))\n%who", "python")
    assert timed.success, timed.error_message
    out = "".join(timed.logs.stdout)
    assert "per loop (mean ± std. dev. of 2 runs, 2 loops each)" in out
    assert "lines" in out  # %who lists the namespace, which kept `lines` from the previous run

    failed = code.run("def inner():\n    return 1 / 0\ninner()", "python")
    assert not failed.success
    assert failed.error_message == "ZeroDivisionError: division by zero"
    # The tool's own JSON carries the IPython traceback, with Jupyter's ename/evalue names too.
    raw = official_session.call_mcp_tool("run_code", {"code": "inner()", "language": "python"})
    assert raw.success, raw.error_message
    error = json.loads(raw.data)["error"]
    assert (error["ename"], error["evalue"]) == (error["name"], error["value"]) == ("ZeroDivisionError",
                                                                                    "division by zero")
    assert "Traceback (most recent call last)" in error["traceback"] and "----> 2     return 1 / 0" in error["traceback"]
    traced = code.run("inner()", "python", stream_beta=True)
    assert not traced.success and traced.error is not None and traced.error.name == "ZeroDivisionError"
    unknown = code.run("%no_such_magic", "python")
    assert not unknown.success
    assert unknown.error_message == "UsageError: Line magic function `%no_such_magic` not found."


def test_javascript_java_and_r(official_session: Any) -> None:
    code = official_session.code
    js = code.run("console.log(JSON.stringify({sum: [1, 2, 3].reduce((a, b) => a + b)}))", "nodejs")
    assert js.success, js.error_message
    assert js.result == '{"sum":6}\n'
    java = code.run("public class Hello {\n  public static void main(String[] a) {\n"
                    "    System.out.println(\"hello \" + (6 * 7));\n  }\n}", "java", timeout_s=60)
    assert java.success, java.error_message
    assert java.logs.stdout == ["hello 42\n"]
    r = code.run("v <- c(2, 4, 6)\ncat(mean(v), '\\n')", "r")
    assert r.success, r.error_message
    assert r.logs.stdout == ["4 \n"]


def test_error_result(official_session: Any) -> None:
    result = official_session.code.run("{}['missing']", "python")
    assert not result.success
    assert result.error is not None
    assert result.error_message == "KeyError: 'missing'"
    assert official_session.code.run("'fine'", "python").result == "'fine'"


def test_timeout_interrupts_and_next_run_works(official_session: Any) -> None:
    code = official_session.code
    assert code.run("total = 0", "python").success
    started = time.monotonic()
    result = code.run("while True:\n    total += 1", "python", timeout_s=1)
    assert time.monotonic() - started < 10
    assert not result.success
    assert result.error_message.startswith("TimeoutError")
    after = code.run("total > 0", "python")
    assert after.success and after.result == "True"


def test_stream_beta_chunks_and_end(official_session: Any) -> None:
    chunks: list[str] = []
    errors: list[Any] = []
    result = official_session.code.run(
        "import sys, time\nfor i in range(3):\n    print('line', i, flush=True)\n    time.sleep(0.05)\n"
        "print('oops', file=sys.stderr)\n6 * 7", "python", stream_beta=True, on_stdout=chunks.append,
        on_error=errors.append)
    assert result.success, result.error_message
    assert errors == []
    assert "".join(chunks) == "line 0\nline 1\nline 2\n"
    assert len(chunks) >= 3
    assert result.logs.stderr == ["oops\n"]
    assert result.result == "42"
    assert isinstance(result.execution_count, int)
    assert len(result.request_id) == 32  # the invocation id

    failed = official_session.code.run("1/0", "python", stream_beta=True, on_error=errors.append)
    assert not failed.success
    assert failed.error is not None and failed.error.name == "ZeroDivisionError"
    assert failed.error_message == "ZeroDivisionError: division by zero"
    assert errors and errors[-1]["code"] == "ZeroDivisionError"


def test_stream_cancel_through_the_ws_client(official_session: Any) -> None:
    chunks: list[str] = []

    def on_event(invocation_id: str, data: dict[str, Any]) -> None:
        if data.get("eventType") == "stdout":
            chunks.append(data["chunk"])

    client = official_session._get_ws_client()
    handle = client.call_stream(
        target="wuying_codespace",
        data={"method": "run_code", "mode": "stream",
              "params": {"language": "python", "timeoutS": 60,
                         "code": "import time\nn = 0\nwhile True:\n    n += 1\n    print(n, flush=True)\n"
                                 "    time.sleep(0.02)"}},
        on_event=on_event, on_end=None, on_error=None)
    wait_for(lambda: len(chunks) >= 3, 20, what="streamed chunks")
    # The official handle's cancel() is local only; the server is told with a cancel frame on the
    # invocation, and ends it with status "cancelled".
    handle.write({"method": "cancel"})
    end = handle.wait_end()
    assert end["status"] == "cancelled"
    assert end["executionError"] == "KeyboardInterrupt: execution cancelled"
    started = time.monotonic()
    after = official_session.code.run("n", "python")
    assert after.success, after.error_message
    assert time.monotonic() - started < 10
    assert official_session.code.run("n", "python").result == after.result  # the loop has stopped


def test_ws_rejects_a_wrong_token(official_session: Any) -> None:
    from agb.modules.ws.exceptions import WsHandshakeRejectedError
    from agb.modules.ws.sync_client import WsClient

    client = WsClient(ws_url=official_session.ws_url, ws_token="not-the-token")
    try:
        with pytest.raises(WsHandshakeRejectedError):
            client.connect()
    finally:
        client.close()
