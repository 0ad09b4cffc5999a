"""Stampede's STOMP bridges against a real RabbitMQ (issue 14).

Out: messages sent to a local queue reach a RabbitMQ queue, in order, headers kept, and the
local copy is acknowledged only after RabbitMQ's RECEIPT, so messages sent while RabbitMQ is
down wait in Stampede and arrive once it is back. In: messages sent to RabbitMQ reach a local
Stampede queue. Every wait is bounded.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))

from stampede_launcher import Broker  # noqa: E402
from stomp_helpers import Client, uid  # noqa: E402

MESSAGES = 50


def bridge_config(rabbitmq, suffix: str) -> str:
    return f"""
[[bridges]]
name = "to-rabbit-{suffix}"
direction = "out"
source = "/queue/to-rabbit-{suffix}"
remote_destination = "/queue/from-stampede-{suffix}"
remote_url = "{rabbitmq.url}"
login = "guest"
passcode = "guest"
vhost = "/"
reconnect_initial_ms = 100
reconnect_max_ms = 500

[[bridges]]
name = "from-rabbit-{suffix}"
direction = "in"
remote_source = "/queue/to-stampede-{suffix}"
destination = "/queue/from-rabbit-{suffix}"
remote_url = "{rabbitmq.url}"
login = "guest"
passcode = "guest"
vhost = "/"
reconnect_initial_ms = 100
reconnect_max_ms = 500
"""


@pytest.fixture
def bridged(rabbitmq):
    suffix = uid()
    config = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
    config.write(bridge_config(rabbitmq, suffix))
    config.close()
    broker = Broker(extra_args=["--config", config.name])
    try:
        broker.start()
    except RuntimeError as e:
        pytest.fail(f"could not start the broker: {e}", pytrace=False)
    clients: list[Client] = []

    def client(on, **headers) -> Client:
        c = Client(on, vhost="/")
        c.connect(**headers)
        clients.append(c)
        return c

    yield broker, suffix, client
    for c in clients:
        try:
            c.disconnect(check_receipt=False)
        except Exception:
            c.close()
    broker.stop()
    os.unlink(config.name)


def bodies(client: Client, count: int, timeout: float = 30.0) -> list[str]:
    client.rec.wait_until(lambda: len(client.rec.messages) >= count, f"{count} messages", timeout=timeout)
    return [m.body for m in client.rec.messages]


def test_messages_sent_to_stampede_reach_a_rabbitmq_queue_in_order_with_their_headers(rabbitmq, bridged):
    broker, suffix, client = bridged
    consumer = client(rabbitmq, login="guest", passcode="guest")
    consumer.subscribe(f"/queue/from-stampede-{suffix}")
    producer = client(broker)
    for i in range(MESSAGES):
        producer.send(f"/queue/to-rabbit-{suffix}", f"order {i}", persistent="true", **{"x-order": str(i)})
    assert bodies(consumer, MESSAGES) == [f"order {i}" for i in range(MESSAGES)]
    assert [m.headers.get("x-order") for m in consumer.rec.messages] == [str(i) for i in range(MESSAGES)]


def test_messages_sent_to_rabbitmq_reach_a_stampede_queue(rabbitmq, bridged):
    broker, suffix, client = bridged
    consumer = client(broker)
    consumer.subscribe(f"/queue/from-rabbit-{suffix}")
    producer = client(rabbitmq, login="guest", passcode="guest")
    for i in range(MESSAGES):
        producer.send(f"/queue/to-stampede-{suffix}", f"invoice {i}", persistent="true")
    assert bodies(consumer, MESSAGES) == [f"invoice {i}" for i in range(MESSAGES)]


def test_messages_sent_while_rabbitmq_is_down_wait_in_stampede_and_arrive_when_it_is_back(rabbitmq, bridged):
    broker, suffix, client = bridged
    # A first message proves the bridge is up, so the outage below is one it lives through.
    first = client(rabbitmq, login="guest", passcode="guest")
    first.subscribe(f"/queue/from-stampede-{suffix}")
    producer = client(broker)
    producer.send(f"/queue/to-rabbit-{suffix}", "before", persistent="true")
    assert bodies(first, 1) == ["before"]
    first.disconnect()

    rabbitmq.stop()
    for i in range(20):
        producer.send(f"/queue/to-rabbit-{suffix}", f"while down {i}", persistent="true")
    time.sleep(0.5)
    rabbitmq.start()

    consumer = client(rabbitmq, login="guest", passcode="guest")
    consumer.subscribe(f"/queue/from-stampede-{suffix}")
    got = bodies(consumer, 20, timeout=60.0)
    assert got == [f"while down {i}" for i in range(20)], got
