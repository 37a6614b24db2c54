"""The session activity log on its own: bounded rings, folded repeats, finished sessions kept a while,
and summaries that keep no payloads."""

from __future__ import annotations

from agbox.services.activity import ActivityLog, outcome_of, summarize


def test_rings_are_bounded_and_repeats_fold() -> None:
    log = ActivityLog(per_session=3, finished_kept=2)
    for i in range(5):
        log.add("s-1", "shell", f"echo {i}", 1000.0 + i, 0.01, True, 0)
    assert [e.summary for e in log.entries("s-1")] == ["echo 2", "echo 3", "echo 4"]
    log.add("s-1", "shell", "echo 4", 2000.0, 0.02, True, 0)
    folded = log.entries("s-1")
    assert len(folded) == 3 and folded[-1].repeat == 2 and folded[-1].time == 2000.0
    assert [e.summary for e in log.entries("s-1", after_seq=folded[-2].seq)] == ["echo 4"]
    assert log.entries("s-1", limit=1) == folded[-1:]
    assert log.entries("s-other") == []

    log.finish("s-1")
    assert len(log.entries("s-1")) == 3  # readable after the end
    log.finish("s-2")
    log.finish("s-3")
    assert log.entries("s-1") == []  # only the 2 most recently finished are kept


def test_summaries_keep_no_payloads() -> None:
    assert summarize("shell", {"command": "ls -l", "timeout_ms": 5, "envs": {"KEY": "v4lue"}}) == "ls -l  (envs={KEY})"
    written = summarize("write_file", {"path": "/a", "content": "s3cret", "mode": "append"})
    assert written == "path=/a content=<6 chars> mode=append"
    assert summarize("run_code", {"code": "import os\nprint(1)\n", "language": "python"}) == "import os  (+1 lines)"
    assert len(summarize("shell", {"command": "x" * 5000})) == 200
    assert summarize("shell", {"command": "printf '\x1b[2J'\n  echo  two"}) == "printf '?[2J' echo two"
    assert outcome_of('{"stdout": "", "stderr": "", "exit_code": 2}', True) == (2, "")
    assert outcome_of("boom\nmore", True) == (None, "boom")
    assert outcome_of("fine", False) == (None, "")
