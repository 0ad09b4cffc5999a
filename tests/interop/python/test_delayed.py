"""Delayed delivery and per-subscription redelivery delays, with stomp.py: x-delay (a string
header, which RabbitMQ's delayed-message plugin ignores), ActiveMQ's AMQ_SCHEDULED_DELAY and
a SUBSCRIBE's x-redelivery-delay."""

import time

from stomp_helpers import uid

# "Not before" tolerates the wall clock the broker schedules by against this monotonic clock.
EARLY_S = 0.015
LATE_S = 1.5


def test_x_delay_on_a_queue_is_delivered_at_its_time_not_before(make_client):
    q = f"/queue/delay-{uid()}"
    c = make_client()
    c.subscribe(q)
    sent = time.monotonic()
    c.send(q, "later", **{"x-delay": "800"})
    c.send(q, "now")
    first, second = c.wait_messages(2)
    elapsed = time.monotonic() - sent
    assert [first.body, second.body] == ["now", "later"], "the delayed message does not hold up the next"
    assert 0.8 - EARLY_S <= elapsed <= 0.8 + LATE_S, elapsed
    assert int(second.headers["x-deliver-at"]) <= time.time() * 1000


def test_activemq_scheduled_delay_on_a_topic_reaches_a_subscriber_that_came_later(make_client):
    t = f"/topic/delay-{uid()}"
    pub, sub = make_client(), make_client()
    sent = time.monotonic()
    pub.send(t, "scheduled", AMQ_SCHEDULED_DELAY="600")
    sub.subscribe(t)
    (m,) = sub.wait_messages(1)
    assert m.body == "scheduled"
    assert time.monotonic() - sent >= 0.6 - EARLY_S


def test_a_bad_x_delay_gets_an_error_naming_it(make_client):
    c = make_client()
    c.conn.send(f"/queue/delay-{uid()}", "x", headers={"x-delay": "-1"})
    error = c.rec.wait_until(lambda: c.rec.errors and c.rec.errors[0], "ERROR for a negative x-delay")
    assert "invalid x-delay header" in error.headers["message"], error.headers


def test_a_nack_waits_the_subscriptions_x_redelivery_delay(make_client):
    q = f"/queue/redeliver-{uid()}"
    c = make_client()
    c.subscribe(q, ack="client-individual", **{"x-redelivery-delay": "700"})
    c.send(q, "retry me")
    (m,) = c.wait_messages(1)
    nacked = time.monotonic()
    c.nack(m)
    again = c.wait_messages(1, start=1)[0]
    assert again.body == "retry me" and again.headers.get("redelivered") == "true"
    assert time.monotonic() - nacked >= 0.7 - EARLY_S
    c.ack(again)
