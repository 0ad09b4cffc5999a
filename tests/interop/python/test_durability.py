"""Durability through stomp.py (issue #4): persistent messages and durable subscriptions survive
a broker restart (SIGTERM) and a crash (SIGKILL), RabbitMQ and ActiveMQ style.

The session-wide ``broker`` fixture cannot be restarted, so this module runs its own broker on
a fixed data directory (``RestartableBroker``) and restarts it on the same directory.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time

import pytest

from stampede_launcher import START_TIMEOUT_S, Broker, free_port, port_accepts
from stomp_helpers import Client, uid

QUIET_S = 0.5

pytestmark = pytest.mark.skipif(
    bool(os.environ.get("STAMPEDE_EXTERNAL_STOMP")),
    reason="restarts the broker, which an external broker does not allow",
)


class RestartableBroker(Broker):
    """A broker child process that can be stopped (gracefully or with SIGKILL) and started
    again on the same data directory; ports may change between starts."""

    def __init__(self) -> None:
        super().__init__()
        self.root = tempfile.mkdtemp(prefix="stampede-durability-")
        self.data_dir = os.path.join(self.root, "data")
        self.log_path = os.path.join(self.root, "broker.log")

    def start(self) -> "RestartableBroker":
        if not self.binary.is_file() or not os.access(self.binary, os.X_OK):
            raise RuntimeError(f"broker binary not found at {self.binary}; build it or set STAMPEDE_BIN")
        last_error = ""
        for _attempt in range(3):
            self.stomp_port, self.ws_port = free_port(), free_port()
            while self.ws_port == self.stomp_port:
                self.ws_port = free_port()
            cmd = [
                str(self.binary),
                "--stomp-addr", f"127.0.0.1:{self.stomp_port}",
                "--ws-addr", f"127.0.0.1:{self.ws_port}",
                "--http-addr", "none",
                "--data-dir", self.data_dir,
                "--log-level", "info",
            ]
            self._log_file = open(self.log_path, "ab")
            self._log_file.write(("$ " + " ".join(cmd) + "\n").encode())
            self._log_file.flush()
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=self._log_file, stderr=subprocess.STDOUT,
                start_new_session=True, env={**os.environ, "NO_COLOR": "1"},
            )
            deadline = time.monotonic() + START_TIMEOUT_S
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break
                if port_accepts(self.stomp_port):
                    return self
                time.sleep(0.05)
            if self.proc.poll() is None:
                self._kill()
                raise RuntimeError(f"broker did not accept within {START_TIMEOUT_S}s\n{self.log_tail()}")
            last_error = f"broker exited early with code {self.proc.returncode}"
            self._kill()
        raise RuntimeError(f"{last_error}\n--- broker log ---\n{self.log_tail()}")

    def crash(self) -> None:
        """kill -9."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def restart(self, crash: bool = False) -> None:
        if crash:
            self.crash()
        else:
            self._kill()  # SIGTERM: orderly shutdown
            assert self.proc.returncode == 0, f"broker exited with {self.proc.returncode}\n{self.log_tail()}"
        self.start()

    def stop(self) -> None:
        self._kill()
        if not os.environ.get("STAMPEDE_KEEP_DATA"):
            shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="module")
def durable_broker():
    b = RestartableBroker()
    try:
        b.start()
    except RuntimeError as e:
        pytest.fail(f"could not start the broker: {e}", pytrace=False)
    yield b
    b.stop()


@pytest.fixture
def connect(durable_broker):
    """Factory: connect(**connect_headers) -> a connected stomp.py Client (1.2) on the broker
    as it runs now. Every client is closed at the end of the test."""
    clients: list[Client] = []

    def make(**headers) -> Client:
        c = Client(durable_broker, version="1.2")
        clients.append(c)
        c.connect(**headers)
        return c

    yield make
    for c in clients:
        c.close()


def assert_quiet(client: Client, before: int) -> None:
    time.sleep(QUIET_S)
    extra = client.bodies()[before:]
    assert not extra, f"unexpected messages: {extra}"


@pytest.mark.parametrize("crash", [False, True], ids=["sigterm", "kill-9"])
def test_persistent_message_survives_broker_restart(durable_broker, connect, crash):
    q = f"/queue/durable-{uid()}"
    pub = connect()
    pub.send(q, "persistent-1", persistent="true")
    pub.send(q, "transient", persistent="false")
    pub.send(q, "persistent-2", persistent="true")
    durable_broker.restart(crash=crash)
    consumer = connect()
    consumer.subscribe(q, ack="client-individual")
    msgs = consumer.wait_messages(2)
    assert [m.body for m in msgs] == ["persistent-1", "persistent-2"]
    for m in msgs:
        assert m.headers.get("persistent") == "true"
        consumer.ack(m)
    assert_quiet(consumer, 2)


def test_acked_message_is_gone_and_unacked_is_redelivered_after_restart(durable_broker, connect):
    q = f"/queue/redeliver-{uid()}"
    pub = connect()
    for body in ("a", "b", "c", "d"):
        pub.send(q, body, persistent="true")
    first = connect()
    first.subscribe(q, ack="client-individual", **{"prefetch-count": "2"})
    a, b = first.wait_messages(2)
    assert (a.body, b.body) == ("a", "b")
    first.ack(a)  # frees one credit: c is delivered, d is not
    assert first.wait_messages(3)[2].body == "c"
    durable_broker.restart()
    second = connect()
    second.subscribe(q, ack="client-individual")
    msgs = second.wait_messages(3)
    assert [m.body for m in msgs] == ["b", "c", "d"], "the acked message must not come back"
    assert [m.headers.get("redelivered") == "true" for m in msgs] == [True, True, False], [
        dict(m.headers) for m in msgs
    ]
    for m in msgs:
        second.ack(m)
    assert_quiet(second, 3)


def test_rabbitmq_durable_subscription_survives_reconnect_and_restart(durable_broker, connect):
    topic = f"/topic/rabbit-{uid()}"
    sub_headers = {"durable": "true", "auto-delete": "false"}
    sub_id = f"durable-{uid()}"
    subscriber = connect()
    subscriber.subscribe(topic, id=sub_id, ack="client-individual", **sub_headers)
    subscriber.disconnect()

    pub = connect()
    pub.send(topic, "while-away-1", persistent="true")
    pub.send(topic, "while-away-2", persistent="true")
    subscriber = connect()
    subscriber.subscribe(topic, id=sub_id, ack="client-individual", **sub_headers)
    msgs = subscriber.wait_messages(2)
    assert [m.body for m in msgs] == ["while-away-1", "while-away-2"]
    for m in msgs:
        subscriber.ack(m)
    subscriber.disconnect()

    pub.send(topic, "across-restart-1", persistent="true")
    pub.send(topic, "across-restart-2", persistent="true")
    durable_broker.restart()
    subscriber = connect()
    subscriber.subscribe(topic, id=sub_id, ack="client-individual", **sub_headers)
    msgs = subscriber.wait_messages(2)
    assert [m.body for m in msgs] == ["across-restart-1", "across-restart-2"]
    for m in msgs:
        subscriber.ack(m)
    assert_quiet(subscriber, 2)

    # UNSUBSCRIBE with durable:true deletes it: nothing is kept for that name any more.
    rid = f"unsub-{uid()}"
    subscriber.frame("UNSUBSCRIBE", {"id": sub_id, "durable": "true", "receipt": rid})
    subscriber.wait_receipt(rid, "for UNSUBSCRIBE durable:true")
    subscriber.disconnect()
    pub = connect()
    pub.send(topic, "after-delete", persistent="true")
    subscriber = connect()
    subscriber.subscribe(topic, id=sub_id, ack="client-individual", **sub_headers)
    assert_quiet(subscriber, 0)


def test_activemq_durable_subscription_survives_reconnect_and_crash(durable_broker, connect):
    topic = f"/topic/amq-{uid()}"
    client_id = f"client-{uid()}"
    name = "orders-archive"
    subscriber = connect(**{"client-id": client_id})
    subscriber.subscribe(topic, id="1", ack="client-individual", **{"activemq.subscriptionName": name})
    subscriber.disconnect()

    pub = connect()
    pub.send(topic, "while-away", persistent="true")
    subscriber = connect(**{"client-id": client_id})
    subscriber.subscribe(topic, id="1", ack="client-individual", **{"activemq.subscriptionName": name})
    (m,) = subscriber.wait_messages(1)
    assert m.body == "while-away"
    subscriber.ack(m)
    subscriber.disconnect()

    pub.send(topic, "across-crash", persistent="true")
    durable_broker.restart(crash=True)
    subscriber = connect(**{"client-id": client_id})
    subscriber.subscribe(topic, id="1", ack="client-individual", **{"activemq.subscriptionName": name})
    (m,) = subscriber.wait_messages(1)
    assert m.body == "across-crash"
    subscriber.ack(m)
    subscriber.disconnect()

    # UNSUBSCRIBE naming the subscription, from a new connection that is not subscribed.
    other = connect(**{"client-id": client_id})
    rid = f"unsub-{uid()}"
    other.frame("UNSUBSCRIBE", {"id": "1", "activemq.subscriptionName": name, "receipt": rid})
    other.wait_receipt(rid, "for UNSUBSCRIBE activemq.subscriptionName")
    assert not other.rec.errors, other.rec.errors
    # A client-id is held by one live connection per virtual host (as ActiveMQ does).
    other.disconnect()
    pub = connect()
    pub.send(topic, "after-delete", persistent="true")
    subscriber = connect(**{"client-id": client_id})
    subscriber.subscribe(topic, id="1", ack="client-individual", **{"activemq.subscriptionName": name})
    assert_quiet(subscriber, 0)
