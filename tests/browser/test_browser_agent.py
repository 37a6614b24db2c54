"""act / observe / extract with the official SDK's browser agent, against a stand-in language model: a small
local server that speaks the OpenAI chat-completions API and answers from the page snapshot agbox sends.
The browser side is real (Chromium in the session, actions through CDP)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from agb.modules.browser.browser import BrowserOption
from agb.modules.browser.browser_agent import ObserveOptions
from agb.session_params import CreateSessionParams
from pydantic import BaseModel

from tests.conftest import ServerProcess, start_server, wait_for

FORM = ("data:text/html,<title>form</title><h1>Order desk</h1><input id='q' placeholder='search'>"
        "<button id='go' onclick=\"document.title='clicked '+document.getElementById('q').value\">Go</button>")
MODEL_KEY = "test-model-key"


class StandInModel(BaseHTTPRequestHandler):
    """Answers like a model would, from the JSON agbox sends as the user message."""

    seen: list[dict[str, Any]] = []

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        request = json.loads(body["messages"][-1]["content"])
        StandInModel.seen.append({"path": self.path, "auth": self.headers.get("Authorization"),
                                  "model": body.get("model"), "task": request["task"]})
        page = request["page"]
        elements = page["elements"]
        instruction = request["instruction"].lower()
        if request["task"] == "act" and "type" in instruction:
            target = next(e for e in elements if e["tag"] == "input")
            answer: dict[str, Any] = {"method": "fill", "selector": target["selector"],
                                      "arguments": {"value": instruction.split("'")[1]}, "description": "typed"}
        elif request["task"] == "act":
            target = next(e for e in elements if e["text"] and e["text"].lower() in instruction)
            answer = {"method": "click", "selector": target["selector"], "arguments": {}, "description": "clicked"}
        elif request["task"] == "observe":
            answer = {"elements": [{"selector": e["selector"], "description": f"the {e['text']} button",
                                    "method": "click"} for e in elements if e["tag"] == "button"]}
        else:
            assert "heading" in request["schema"]["properties"]
            answer = {"heading": page["text"].splitlines()[0], "title": page["title"]}
        reply = json.dumps({"choices": [{"message": {"role": "assistant", "content": json.dumps(answer)}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)


class Page(BaseModel):
    heading: str
    title: str


@pytest.fixture(scope="module")
def model_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), StandInModel)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    env = {"AGBOX_BROWSER_MODEL_URL": f"http://127.0.0.1:{httpd.server_address[1]}/v1",
           "AGBOX_BROWSER_MODEL": "stand-in-1", "AGBOX_BROWSER_MODEL_API_KEY": MODEL_KEY, "AGBOX_PREWARM_IMAGES": ""}
    server = start_server(Path(tmp_path_factory.mktemp("model")) / "data", extra_env=env)
    try:
        yield server
    finally:
        server.stop()
        httpd.shutdown()
        httpd.server_close()


def test_act_observe_extract_with_a_stand_in_model(model_server: ServerProcess) -> None:
    from agb import AGB
    from agb.config import Config

    official = AGB(api_key=model_server.api_key, cfg=Config(endpoint=model_server.endpoint, timeout_ms=60000))
    session = official.create(CreateSessionParams(image_id="agb-browser-use-1")).session
    try:
        assert session.browser.initialize(BrowserOption())
        agent = session.browser.agent
        assert json.loads(asyncio.run(agent.navigate_async(FORM)))["title"] == "form"

        # The tools the SDK's act/extract poll (they pause 5-8 s between polls), driven here directly.
        typed = session.call_mcp_tool("page_use_act", {"context_id": 0, "action": "type 'agbox' into the search box"})
        assert typed.success and json.loads(typed.data)["steps"][0]["method"] == "fill"
        found, elements = asyncio.run(agent.observe_async(ObserveOptions(instruction="find the go button")))
        assert found and [(e.selector, e.method) for e in elements] == [("#go", "click")]
        # The official act: an ObserveResult runs as is, without the model (start, then one poll after 5 s).
        clicked = asyncio.run(agent.act_async(elements[0]))
        assert clicked.success and json.loads(clicked.message)[0]["selector"] == "#go"
        assert json.loads(session.call_mcp_tool("browser_page_text", {}).data)["title"] == "clicked agbox"

        schema = "schema: " + json.dumps(Page.model_json_schema())
        extracted = session.call_mcp_tool("page_use_extract", {"context_id": 0, "instruction": "heading and title",
                                                                "field_schema": schema})
        assert Page.model_validate_json(extracted.data) == Page(heading="Order desk", title="clicked agbox")
        started = session.call_mcp_tool("page_use_extract_async", {"context_id": 0, "instruction": "the heading",
                                                                    "field_schema": schema})
        task_id = json.loads(started.data)["task_id"]
        result = wait_for(lambda: session.call_mcp_tool("page_use_get_extract_result", {"task_id": task_id}).data, 30,
                          0.05, what="the extract task")
        assert json.loads(result)["heading"] == "Order desk"
        missing = session.call_mcp_tool("page_use_act", {"context_id": 0, "action": "click the nowhere link"})
        assert not missing.success
    finally:
        with contextlib.suppress(Exception):
            official.delete(session)
    assert {(s["auth"], s["model"], s["path"]) for s in StandInModel.seen} == \
        {(f"Bearer {MODEL_KEY}", "stand-in-1", "/v1/chat/completions")}
    assert {s["task"] for s in StandInModel.seen} == {"act", "observe", "extract"}
