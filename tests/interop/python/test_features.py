"""Beyond other brokers, with stomp.py: selectors, consumer priority, exclusive consumers and
queue browsing, in the ActiveMQ/RabbitMQ/Apollo header spellings stomp.py users already send."""

from stomp_helpers import uid


def test_a_selector_delivers_only_matching_queue_messages_and_leaves_the_rest_for_others(make_client):
    q = f"/queue/sel-{uid()}"
    pub, europe = make_client(), make_client()
    europe.subscribe(q, selector="region = 'eu' AND amount > 100")
    pub.send(q, "small-eu", region="eu", amount="50")
    pub.send(q, "big-us", region="us", amount="500")
    pub.send(q, "big-eu", region="eu", amount="500.5")
    (m,) = europe.wait_messages(1)
    assert m.body == "big-eu"
    everyone = make_client()
    everyone.subscribe(q)
    msgs = everyone.wait_messages(2)
    assert [m.body for m in msgs] == ["small-eu", "big-us"]
    assert europe.bodies() == ["big-eu"]


def test_a_bad_selector_gets_an_error_with_the_position(make_client):
    c = make_client()
    c.subscribe(f"/topic/sel-{uid()}", receipt=False, selector="region = 'eu' AND")
    error = c.rec.wait_until(lambda: c.rec.errors and c.rec.errors[0], "ERROR for a bad selector")
    assert "invalid selector header: at position 18" in error.headers["message"], error.headers


def test_the_higher_activemq_priority_consumer_gets_messages_while_it_has_credit(make_client):
    q = f"/queue/prio-{uid()}"
    low, high, pub = make_client(), make_client(), make_client()
    low.subscribe(q, ack="client-individual", **{"activemq.priority": "1", "prefetch-count": "10"})
    high.subscribe(q, ack="client-individual", **{"activemq.priority": "9", "prefetch-count": "2"})
    for i in range(1, 5):
        pub.send(q, f"m{i}")
    assert [m.body for m in high.wait_messages(2)] == ["m1", "m2"]
    assert [m.body for m in low.wait_messages(2)] == ["m3", "m4"]


def test_an_exclusive_consumer_takes_everything_until_it_leaves(make_client):
    q = f"/queue/excl-{uid()}"
    first, second, pub = make_client(), make_client(), make_client()
    first.subscribe(q, **{"activemq.exclusive": "true"})
    second.subscribe(q, **{"activemq.exclusive": "true"})
    for i in range(1, 4):
        pub.send(q, f"m{i}")
    assert [m.body for m in first.wait_messages(3)] == ["m1", "m2", "m3"]
    first.disconnect()
    pub.send(q, "m4")
    assert [m.body for m in second.wait_messages(1)] == ["m4"]
    assert second.bodies() == ["m4"], "the stand-by got nothing while the first was active"


def test_a_browser_sees_the_queue_then_an_empty_browser_end_message_and_consumes_nothing(make_client):
    q = f"/queue/browse-{uid()}"
    pub, browser = make_client(), make_client()
    for i in range(1, 4):
        pub.send(q, f"m{i}")
    browser.subscribe(q, id="look", browser="true")
    msgs = browser.wait_messages(4)
    assert [m.body for m in msgs[:3]] == ["m1", "m2", "m3"]
    end = msgs[3]
    assert end.headers.get("browser") == "end" and end.body == "", end.headers
    browser.unsubscribe("look")  # accepted although the browse already ended
    consumer = make_client()
    consumer.subscribe(q)
    assert [m.body for m in consumer.wait_messages(3)] == ["m1", "m2", "m3"]
