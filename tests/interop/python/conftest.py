"""pytest fixtures: one real broker per test session, and stomp.py client factories."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from stampede_launcher import Broker  # noqa: E402
from stomp_helpers import Client  # noqa: E402

_broker: Broker | None = None


@pytest.fixture(scope="session")
def broker():
    global _broker
    b = Broker()
    try:
        b.start()
    except RuntimeError as e:
        pytest.fail(f"could not start the broker: {e}", pytrace=False)
    _broker = b
    yield b
    _broker = None
    b.stop()


@pytest.fixture
def make_client(broker):
    """Factory: make_client(version='1.2', connect=True, auto_decode=True, **connect_headers)."""
    clients: list[Client] = []

    def make(version: str = "1.2", connect: bool = True, auto_decode: bool = True, **headers) -> Client:
        c = Client(broker, version=version, auto_decode=auto_decode)
        clients.append(c)
        if connect:
            c.connect(**headers)
        return c

    yield make
    for c in clients:
        try:
            c.disconnect(check_receipt=False)
        except Exception:
            c.close()


@pytest.fixture
def client(make_client):
    return make_client()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """On failure, attach the tail of the broker log (and note if it died)."""
    outcome = yield
    report = outcome.get_result()
    if report.failed and _broker is not None:
        state = "running" if _broker.alive() else f"EXITED (code {_broker.proc.returncode})"
        report.sections.append(("broker log", f"broker is {state}\n{_broker.log_tail()}"))
