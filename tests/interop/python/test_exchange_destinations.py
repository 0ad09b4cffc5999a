"""RabbitMQ's exchange destinations through stomp.py: code written for RabbitMQ's STOMP adapter
(`/exchange/amq.topic/...`, `amq.direct`, `amq.fanout`, named exchanges) works unchanged."""

import time

from stomp_helpers import uid

QUIET_S = 0.4


def test_amq_topic_is_the_exchange_of_topic_destinations(make_client):
    key = f"prices{uid()}"
    via_exchange, via_topic, pub = make_client(), make_client(), make_client()
    via_exchange.subscribe(f"/exchange/amq.topic/{key}.*")
    via_topic.subscribe(f"/topic/{key}.eur")
    pub.send(f"/exchange/amq.topic/{key}.eur", "from the exchange")
    pub.send(f"/topic/{key}.eur", "from the topic")
    assert sorted(m.body for m in via_exchange.wait_messages(2)) == ["from the exchange", "from the topic"]
    assert sorted(m.body for m in via_topic.wait_messages(2)) == ["from the exchange", "from the topic"]


def test_amq_direct_routes_on_the_exact_key(make_client):
    key = f"k{uid()}"
    exact, other, pub = make_client(), make_client(), make_client()
    exact.subscribe(f"/exchange/amq.direct/{key}")
    other.subscribe(f"/exchange/amq.direct/{key}.other")
    pub.send(f"/exchange/amq.direct/{key}", "direct")
    assert exact.wait_messages(1)[0].body == "direct"
    time.sleep(QUIET_S)
    assert other.bodies() == []


def test_amq_direct_refuses_wildcards(make_client):
    sub = make_client()
    sub.subscribe("/exchange/amq.direct/a.*", receipt=False)
    assert "wildcard" in sub.wait_error().headers["message"]


def test_amq_fanout_ignores_the_routing_key(make_client):
    a, b, pub = make_client(), make_client(), make_client()
    a.subscribe("/exchange/amq.fanout/anything")
    b.subscribe("/exchange/amq.fanout")
    body = f"fanout {uid()}"
    pub.send("/exchange/amq.fanout/some.key", body)
    assert body in [m.body for m in a.wait_messages(1)]
    assert body in [m.body for m in b.wait_messages(1)]


def test_a_named_exchange_is_its_own_topic_namespace(make_client):
    key = f"eu{uid()}"
    named, plain, pub = make_client(), make_client(), make_client()
    named.subscribe(f"/exchange/orders/{key}.#")
    plain.subscribe(f"/topic/{key}.#")
    pub.send(f"/exchange/orders/{key}.paris", "named exchange")
    assert named.wait_messages(1)[0].body == "named exchange"
    time.sleep(QUIET_S)
    assert plain.bodies() == []
