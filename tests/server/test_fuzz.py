"""The OpenAPI document and a bounded schemathesis run against a real `agbox serve`.

The document is generated from the operation table the routes validate with (server/operations.py);
here we check that the served one is the checked-in docs/openapi.json, that every route of the app is
in it, and then let schemathesis (property-based, positive and negative data, coverage + fuzzing
phases) throw a few hundred cases at the server: zero 5xx, zero internal-error envelopes, every
response conforming to the document. `make fuzz` runs the same with many more cases.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import REPO, ServerProcess, start_server

DOC = REPO / "docs" / "openapi.json"
FUZZ_KEY = "fuzz-key-0123456789"
# Checks that contradict the AGB protocol on purpose: wire operations answer HTTP 200 with
# success=false (also for a missing/invalid key or schema-violating input), which the official SDK
# needs; agb_envelope_is_not_an_internal_error (tests/server/fuzz_hooks.py) checks those envelopes.
EXAMPLES, PHASES = int(os.environ.get("AGBOX_FUZZ_EXAMPLES", "8")), os.environ.get("AGBOX_FUZZ_PHASES", "fuzzing")
EXCLUDED_CHECKS = "negative_data_rejection,positive_data_acceptance,ignored_auth,missing_required_header"


def schemathesis_command(endpoint: str, session: dict[str, Any], examples: int, report: Path,
                         phases: str = "coverage,fuzzing") -> list[str]:
    return [str(Path(sys.executable).parent / "schemathesis"), "run", f"{endpoint}/openapi.json",
            "--checks", "all", "--exclude-checks", EXCLUDED_CHECKS, "--phases", phases,
            "--max-examples", str(examples), "--seed", "13", "--workers", "2", "--request-timeout", "60",
            "-H", f"Authorization: Bearer {FUZZ_KEY}", "-H", f"X-Access-Token: {session['token']}",
            "--report", "junit", "--report-junit-path", str(report), "--output-truncate", "true"]


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    # Few sessions: positive createSession cases make real sandboxes; past the cap they get a clear error.
    srv = start_server(tmp_path_factory.mktemp("fuzz") / "data", api_key=FUZZ_KEY,
                       extra_env={"AGBOX_MAX_SESSIONS": "4", "AGBOX_WARM_POOL": "1"})
    try:
        yield srv
    finally:
        srv.stop()


def test_served_document_is_the_checked_in_one(fuzz_server: ServerProcess) -> None:
    served = httpx.get(f"{fuzz_server.endpoint}/openapi.json").json()
    assert served == json.loads(DOC.read_text()), "docs/openapi.json is stale: python -m agbox.server.openapi > it"
    assert served["openapi"].startswith("3.1") and len(served["paths"]) >= 30


def test_every_route_is_documented(fuzz_server: ServerProcess) -> None:
    """Every operation in the document is routed (never the generic 404), and every wire route the
    app registered is in the document."""
    document = json.loads(DOC.read_text())
    with httpx.Client(base_url=fuzz_server.endpoint, timeout=30) as client:
        for path, methods in document["paths"].items():
            concrete = re.sub(r"\{[^}]+\}", "x", path)
            for method in methods:
                answer = client.request(method.upper(), concrete)
                assert not (answer.status_code == 404 and "no such endpoint" in answer.text), (method, path)
    from agbox.server.wire import ROUTES

    documented = {(method.upper(), path) for path, methods in document["paths"].items() for method in methods}
    made_by_app = set(ROUTES.values())
    assert made_by_app <= documented, made_by_app - documented


def test_schemathesis_finds_no_server_error(fuzz_server: ServerProcess, tmp_path: Path) -> None:
    headers = {"authorization": f"Bearer {FUZZ_KEY}"}
    created = httpx.post(f"{fuzz_server.endpoint}/mcp/createSession", params={"imageId": "agb-code-space-1"},
                         json={}, headers=headers, timeout=60).json()
    session = created["data"]
    context = httpx.get(f"{fuzz_server.endpoint}/sdk/GetContext", params={"name": "fuzz", "allowCreate": "true"},
                        headers=headers).json()["data"]
    report = tmp_path / "junit.xml"
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.server.fuzz_hooks", "PYTHONPATH": str(REPO),
           "AGBOX_FUZZ_SESSION": session["sessionId"], "AGBOX_FUZZ_CONTEXT": context["id"]}
    run = subprocess.run(schemathesis_command(fuzz_server.endpoint, session, EXAMPLES, report, PHASES), cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=max(300, EXAMPLES * 30))
    summary = run.stdout[-6000:]
    sessions = subprocess.run([sys.executable, "-m", "agbox", "sessions", "list", "--all", "--data-dir",
                               str(fuzz_server.data_dir)], capture_output=True, text=True).stdout
    assert run.returncode == 0, summary + "\nsessions:\n" + sessions
    generated = re.search(r"(\d+) generated", run.stdout)
    assert generated and int(generated.group(1)) >= 200, summary
    print(f"schemathesis: {generated.group(1)} cases, 0 failures")  # shown with -s / in the CI log
    # The live session the hooks hand to half of the cases was not ended by any of them.
    info = httpx.post(f"{fuzz_server.endpoint}/mcp/getSessionInfo", json={"sessionId": session["sessionId"]},
                      headers=headers).json()
    assert info["data"]["status"] == "RUNNING", sessions
    log = fuzz_server.log()
    assert "Traceback" not in log and "internal error" not in log, log[-3000:]
