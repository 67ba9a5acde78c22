"""A pytest plugin for ``bench/gpu_suite.py``: one JSON line per test outcome, written as each test
finishes (to the file named by ``GPU_SUITE_REPORT``), so a run killed at its time budget keeps
what ran; the first line lists the collected tests, so the suite can name those that never ran.

    GPU_SUITE_REPORT=/tmp/r.jsonl python -m pytest -p gpu_suite_report tests/test_gpu.py
"""

from __future__ import annotations

import json
import os


def _write(record: dict):
    path = os.environ.get("GPU_SUITE_REPORT")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")


def pytest_collection_finish(session):
    _write({"collected": [item.nodeid for item in session.items]})


def pytest_runtest_logreport(report):
    # One line per test: its call, or the setup/teardown phase that failed or skipped it.
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed") or \
            (report.when == "teardown" and report.outcome == "failed"):
        message = ""
        if report.outcome == "skipped" and isinstance(report.longrepr, tuple):
            message = str(report.longrepr[2])
        elif report.outcome == "failed":
            crash = getattr(report.longrepr, "reprcrash", None)
            message = crash.message if crash is not None else str(report.longrepr)[-500:]
        outcome = report.outcome if report.when == "call" or report.outcome == "skipped" else "error"
        _write({"test": report.nodeid, "outcome": outcome, "when": report.when,
                "seconds": round(report.duration, 2), "message": message[:1000]})
