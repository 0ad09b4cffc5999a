"""Security of names through stomp.py (issue #10): durable subscriptions belong to the user that
created them, virtual hosts are separate namespaces, and reply queues are read only by the
connection that asked for the reply.

This module runs its own broker with users and virtual hosts from a config file; password
hashes are made by the real `stampede passwd`.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time

import pytest

from stampede_launcher import Broker
from stomp_helpers import Client, uid

QUIET_S = 0.5

pytestmark = pytest.mark.skipif(
    bool(os.environ.get("STAMPEDE_EXTERNAL_STOMP")),
    reason="needs a broker configured with its own users",
)


def _hash(binary, password: str) -> str:
    out = subprocess.run([str(binary), "passwd", "--password", password], check=True,
                         capture_output=True, text=True, timeout=60)
    return out.stdout.strip()


@pytest.fixture(scope="module")
def secured():
    probe = Broker()
    root = tempfile.mkdtemp(prefix="stampede-security-")
    path = os.path.join(root, "stampede.toml")
    alice, mallory = _hash(probe.binary, "a-pass"), _hash(probe.binary, "m-pass")
    with open(path, "w") as f:
        f.write(f"""
vhosts = ["prod", "dev"]

[users.alice]
password_hash = "{alice}"

[users.mallory]
password_hash = "{mallory}"
read = ["/topic/public.*", "/queue/m-*"]
write = ["/topic/public.*", "/queue/m-*"]
""")
    broker = Broker(extra_args=["--config", path])
    broker.start()
    yield broker
    broker.stop()


def connect(broker, login: str, vhost: str | None = None, **headers) -> Client:
    c = Client(broker, vhost=vhost)
    c.connect(login=login, passcode={"alice": "a-pass", "mallory": "m-pass"}[login], **headers)
    return c


def test_a_durable_subscription_is_refused_to_another_user_and_keeps_its_backlog(secured):
    name = f"prices-{uid()}"
    owner = connect(secured, "alice", **{"client-id": f"alice-{uid()}"})
    owner.subscribe("/topic/secret.prices", id="d", ack="client-individual", durable="true",
                    **{"auto-delete": "false", "x-queue-name": name})
    owner.disconnect()
    publisher = connect(secured, "alice")
    publisher.send("/topic/secret.prices", "while away", persistent="true")
    publisher.disconnect()

    thief = connect(secured, "mallory")
    thief.subscribe("/topic/public.news", id="d", receipt=False, durable="true",
                    **{"auto-delete": "false", "x-queue-name": name})
    error = thief.wait_error("ERROR for another user's durable subscription")
    assert "access denied" in error.headers["message"]
    time.sleep(QUIET_S)
    assert thief.bodies() == []
    thief.close()

    owner = connect(secured, "alice")
    owner.subscribe("/topic/secret.prices", id="d", ack="client-individual", durable="true",
                    **{"auto-delete": "false", "x-queue-name": name})
    assert owner.wait_messages(1)[0].body == "while away"
    owner.disconnect()


def test_a_second_connection_with_the_same_client_id_is_refused(secured):
    client_id = f"app-{uid()}"
    first = connect(secured, "alice", **{"client-id": client_id})
    second = Client(secured)
    error = second.connect(expect_error=True, login="mallory", passcode="m-pass", **{"client-id": client_id})
    assert "client-id" in error.headers["message"]
    second.close()
    first.disconnect()


def test_virtual_hosts_do_not_share_queues(secured):
    queue = f"/queue/payments-{uid()}"
    prod = connect(secured, "alice", vhost="prod")
    prod.subscribe(queue)
    dev = connect(secured, "alice", vhost="dev")
    dev.send(queue, "sent on dev")
    time.sleep(QUIET_S)
    assert prod.bodies() == [], "a message sent on dev reached a consumer on prod"
    dev.subscribe(queue)
    assert dev.wait_messages(1)[0].body == "sent on dev"
    prod.disconnect()
    dev.disconnect()


def test_a_reply_queue_is_read_only_by_the_requester(secured):
    jobs = f"/queue/jobs-{uid()}"
    requester = connect(secured, "alice")
    worker = connect(secured, "alice")
    worker.subscribe(jobs)
    requester.send(jobs, "job", **{"reply-to": "/temp-queue/answers"})
    reply_to = worker.wait_messages(1)[0].headers["reply-to"]
    assert reply_to.startswith("/reply-queue/")

    thief = connect(secured, "alice")
    thief.subscribe(reply_to, receipt=False)
    assert "access denied" in thief.wait_error("ERROR for another connection's reply queue").headers["message"]
    thief.close()

    worker.send(reply_to, "answer")
    assert requester.wait_messages(1)[0].body == "answer"
    requester.disconnect()
    worker.disconnect()
