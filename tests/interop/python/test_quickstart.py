"""The README's Python quick start, run as written (only the port changed) against a broker."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

from stomp_helpers import uid

README = os.path.join(os.path.dirname(__file__), "..", "..", "..", "README.md")


def snippet(marker: str, language: str) -> str:
    text = open(README, encoding="utf-8").read()
    found = re.search(rf"<!-- {marker} -->\n```{language}\n(.*?)```", text, re.S)
    assert found, f"the README has no {marker} snippet"
    return found.group(1)


def test_the_python_quick_start_worker_answers_a_job_sent_with_reply_to(broker, make_client, tmp_path):
    host, port = broker.host_and_port
    code = snippet("quickstart-python", "python").replace("61613", str(port)).replace("127.0.0.1", host)
    script = tmp_path / "worker.py"
    script.write_text(code)
    worker = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        requester = make_client()
        answers = f"/temp-queue/answers-{uid()}"
        requester.subscribe(answers)
        deadline = time.monotonic() + 10
        # The worker subscribes a moment after it starts: send until it answers.
        while not requester.bodies() and time.monotonic() < deadline:
            requester.send("/queue/jobs", "resize photo.jpg", **{"reply-to": answers})
            time.sleep(0.3)
        assert "done: resize photo.jpg" in requester.bodies(), worker.stdout.read1(4096) if worker.poll() is not None else ""
    finally:
        worker.kill()
        worker.wait(timeout=10)
