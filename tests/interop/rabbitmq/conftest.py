"""A real RabbitMQ (Debian's rabbitmq-server with its STOMP plugin) for the bridge tests.

The test runner (`./tests/run --only rabbitmq`) installs the package; this fixture starts a
private node on free loopback ports with its own data directory (never the system's), waits
(bounded) for its STOMP listener, and stops it afterwards. Nothing else on the machine is
touched: the node name, the Erlang distribution port and epmd are all loopback and private.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))

from stampede_launcher import free_port, port_accepts  # noqa: E402

RABBITMQ_SERVER = Path(os.environ.get("RABBITMQ_SERVER", "/usr/lib/rabbitmq/bin/rabbitmq-server"))
RABBITMQCTL = RABBITMQ_SERVER.with_name("rabbitmqctl")
START_TIMEOUT_S = 120.0


class RabbitMQ:
    """One private RabbitMQ node; `host_and_port` is its STOMP listener (for stomp_helpers)."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="stampede-rabbitmq-")
        self.node = f"stampede-bridge-{os.getpid()}@localhost"
        self.stomp_port = free_port()
        self.amqp_port = free_port()
        self.dist_port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def host_and_port(self) -> tuple[str, int]:
        return ("127.0.0.1", self.stomp_port)

    @property
    def url(self) -> str:
        return f"tcp://127.0.0.1:{self.stomp_port}"

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            RABBITMQ_NODENAME=self.node,
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(self.amqp_port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_MNESIA_BASE=os.path.join(self.dir, "mnesia"),
            RABBITMQ_LOG_BASE=os.path.join(self.dir, "log"),
            RABBITMQ_CONFIG_FILE=os.path.join(self.dir, "rabbitmq.conf"),
            RABBITMQ_ENABLED_PLUGINS_FILE=os.path.join(self.dir, "enabled_plugins"),
            RABBITMQ_PID_FILE=os.path.join(self.dir, "rabbit.pid"),
            ERL_EPMD_ADDRESS="127.0.0.1",
            HOME=self.dir,
        )
        return env

    def start(self) -> "RabbitMQ":
        os.makedirs(os.path.join(self.dir, "mnesia"), exist_ok=True)
        os.makedirs(os.path.join(self.dir, "log"), exist_ok=True)
        with open(os.path.join(self.dir, "enabled_plugins"), "w") as f:
            f.write("[rabbitmq_stomp].\n")
        with open(os.path.join(self.dir, "rabbitmq.conf"), "w") as f:
            f.write(
                f"listeners.tcp.default = 127.0.0.1:{self.amqp_port}\n"
                f"stomp.listeners.tcp.1 = 127.0.0.1:{self.stomp_port}\n"
                "loopback_users = none\n"
            )
        log = open(os.path.join(self.dir, "stdout.log"), "ab")
        self.proc = subprocess.Popen(
            [str(RABBITMQ_SERVER)], env=self._env(), stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"rabbitmq-server exited with {self.proc.returncode}:\n{self.log_tail()}")
            if port_accepts(self.stomp_port):
                return self
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"rabbitmq's STOMP listener did not open within {START_TIMEOUT_S}s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                subprocess.run([str(RABBITMQCTL), "-n", self.node, "stop"], env=self._env(), timeout=60,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                self.proc.wait(timeout=30)
            except (subprocess.TimeoutExpired, OSError):
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.proc = None

    def log_tail(self, lines: int = 30) -> str:
        text = ""
        for name in ("stdout.log",):
            path = os.path.join(self.dir, name)
            if os.path.exists(path):
                with open(path, "rb") as f:
                    text += f.read().decode("utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:]) or "(no rabbitmq log)"

    def remove(self) -> None:
        if not os.environ.get("STAMPEDE_KEEP_DATA"):
            shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def rabbitmq():
    if not RABBITMQ_SERVER.exists():
        pytest.fail(f"{RABBITMQ_SERVER} is missing: run ./tests/run --only rabbitmq (it installs rabbitmq-server)",
                    pytrace=False)
    node = RabbitMQ()
    try:
        node.start()
    except RuntimeError as e:
        node.remove()
        pytest.fail(f"could not start RabbitMQ: {e}", pytrace=False)
    yield node
    node.stop()
    node.remove()
