"""run_code through the unmodified official SDK (agbcloud-sdk 0.12.0): ``session.code.run`` over the
LinkUrl route, and ``stream_beta=True`` / the raw ``WsClient`` over the session WebSocket."""

from __future__ import annotations

import base64
import time
from typing import Any

import pytest

from tests.conftest import wait_for

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


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
