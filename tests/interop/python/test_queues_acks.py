"""Queues (one consumer per message) and the ack modes auto, client, client-individual, NACK."""

from stomp_helpers import uid


def test_queue_messages_wait_until_a_consumer_subscribes(make_client):
    q = f"/queue/x-{uid()}"
    pub = make_client()
    for i in range(3):
        pub.send(q, f"early-{i}")
    consumer = make_client()
    consumer.subscribe(q)
    msgs = consumer.wait_messages(3)
    assert [m.body for m in msgs] == ["early-0", "early-1", "early-2"]
    assert all(m.headers["destination"] == q for m in msgs)


def test_queue_round_robins_each_message_to_exactly_one_of_two_consumers(make_client):
    q = f"/queue/x-{uid()}"
    a, b, pub = make_client(), make_client(), make_client()
    a.subscribe(q)
    b.subscribe(q)
    sent = [f"m{i}" for i in range(10)]
    for body in sent:
        pub.send(q, body)
    a.rec.wait_until(lambda: len(a.rec.messages) + len(b.rec.messages) >= 10, "10 messages across both consumers")
    got_a, got_b = a.bodies(), b.bodies()
    assert sorted(got_a + got_b) == sorted(sent), f"a={got_a} b={got_b}"
    assert not set(got_a) & set(got_b), f"a message went to both consumers: a={got_a} b={got_b}"
    assert len(got_a) == 5 and len(got_b) == 5, f"not round robin: a={got_a} b={got_b}"


def test_auto_ack_messages_are_not_redelivered_after_reconnect(make_client):
    q = f"/queue/auto-{uid()}"
    pub, first = make_client(), make_client()
    first.subscribe(q, ack="auto")
    pub.send(q, "auto-1")
    (m,) = first.wait_messages(1)
    assert "ack" not in m.headers, "1.2 MESSAGE in auto mode should carry no ack header"
    first.disconnect()
    second = make_client()
    second.subscribe(q)
    pub.send(q, "sentinel")
    assert second.messages_before("sentinel") == []


def test_client_ack_is_cumulative_third_ack_covers_first_three(make_client):
    q = f"/queue/client-{uid()}"
    pub, first = make_client(), make_client()
    for i in range(1, 4):
        pub.send(q, f"c{i}")
    first.subscribe(q, ack="client")
    msgs = first.wait_messages(3)
    assert [m.body for m in msgs] == ["c1", "c2", "c3"]
    assert all(m.headers.get("ack") for m in msgs), "1.2 MESSAGE in client mode needs an ack header"
    first.ack(msgs[2])
    first.disconnect()
    second = make_client()
    second.subscribe(q, ack="client")
    pub.send(q, "sentinel")
    redelivered = second.messages_before("sentinel")
    assert [m.body for m in redelivered] == [], "cumulative ACK of c3 should have acked c1..c3"


def test_client_ack_unacked_messages_redelivered_to_new_consumer_with_redelivered_header(make_client):
    q = f"/queue/client-{uid()}"
    pub, first = make_client(), make_client()
    for i in range(1, 4):
        pub.send(q, f"c{i}")
    first.subscribe(q, ack="client")
    msgs = first.wait_messages(3)
    first.ack(msgs[0])  # acks c1 only
    first.disconnect()
    second = make_client()
    second.subscribe(q, ack="client")
    got = second.wait_messages(2)
    assert sorted(m.body for m in got) == ["c2", "c3"]
    for m in got:
        assert m.headers.get("redelivered") == "true", f"missing redelivered:true on {m.headers}"
    pub.send(q, "sentinel")
    assert sorted(m.body for m in second.messages_before("sentinel")) == ["c2", "c3"]


def test_client_ack_unacked_messages_redelivered_when_consumer_drops_without_disconnect(make_client):
    q = f"/queue/client-{uid()}"
    pub, first = make_client(), make_client()
    pub.send(q, "crash-1")
    first.subscribe(q, ack="client")
    first.wait_messages(1)
    first.close()  # TCP close, no DISCONNECT frame
    second = make_client()
    second.subscribe(q, ack="client")
    (m,) = second.wait_messages(1)
    assert m.body == "crash-1"
    assert m.headers.get("redelivered") == "true"


def test_client_individual_ack_redelivers_only_the_unacked_message(make_client):
    q = f"/queue/ci-{uid()}"
    pub, first = make_client(), make_client()
    for i in range(1, 4):
        pub.send(q, f"i{i}")
    first.subscribe(q, ack="client-individual")
    msgs = first.wait_messages(3)
    assert [m.body for m in msgs] == ["i1", "i2", "i3"]
    first.ack(msgs[0])
    first.ack(msgs[2])
    first.disconnect()
    second = make_client()
    second.subscribe(q, ack="client-individual")
    (m,) = second.wait_messages(1)
    assert m.body == "i2"
    assert m.headers.get("redelivered") == "true"
    pub.send(q, "sentinel")
    assert [x.body for x in second.messages_before("sentinel")] == ["i2"]


def test_nack_redelivers_with_redelivered_header(make_client):
    q = f"/queue/nack-{uid()}"
    pub, c = make_client(), make_client()
    pub.send(q, "try-again")
    c.subscribe(q, ack="client-individual")
    (m,) = c.wait_messages(1)
    assert m.headers.get("redelivered") in (None, "false")
    c.nack(m)
    again = c.wait_messages(1, start=1, what="redelivery after NACK")[0]
    assert again.body == "try-again"
    assert again.headers.get("redelivered") == "true"
    c.ack(again)
    assert not c.rec.errors


def test_nack_with_requeue_false_moves_message_to_dead_letter_queue(make_client):
    name = f"work-{uid()}"
    pub, c = make_client(), make_client()
    pub.send(f"/queue/{name}", "poison", **{"x-trace": "dlq-test"})
    c.subscribe(f"/queue/{name}", ack="client-individual")
    (m,) = c.wait_messages(1)
    c.nack(m, requeue="false")
    dlq = make_client()
    dlq.subscribe(f"/queue/DLQ.{name}")
    (dead,) = dlq.wait_messages(1, what=f"message on /queue/DLQ.{name}")
    assert dead.body == "poison"
    assert dead.headers.get("x-trace") == "dlq-test"
    # and it is not redelivered to the original queue
    pub.send(f"/queue/{name}", "sentinel")
    assert [x.body for x in c.messages_before("sentinel")] == ["poison"]
