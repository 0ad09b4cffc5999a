"""Last-value and replay topics with stomp.py: `x-retain:true` on SEND, `x-replay` on SUBSCRIBE
(README, "Beyond other brokers")."""

from stomp_helpers import uid


def test_x_replay_last_gives_a_late_subscriber_the_last_value_of_each_topic_then_live_messages(make_client):
    base = f"ticker-{uid()}"
    pub, late = make_client(), make_client()
    for topic, values in (("eur", ["1.01", "1.02"]), ("usd", ["0.91"])):
        for value in values:
            pub.send(f"/topic/{base}.{topic}", value, **{"x-retain": "true"})
    late.subscribe(f"/topic/{base}.*", **{"x-replay": "last"})
    assert [m.body for m in late.wait_messages(2)] == ["1.02", "0.91"]
    pub.send(f"/topic/{base}.eur", "1.03")
    assert [m.body for m in late.wait_messages(3)][2] == "1.03"
    assert len(late.bodies()) == 3, late.bodies()


def test_a_bad_x_replay_value_is_an_error_naming_the_header(make_client):
    c = make_client()
    c.subscribe(f"/topic/bad-{uid()}", receipt=False, **{"x-replay": "lots"})
    error = c.wait_error("ERROR for x-replay:lots")
    assert "x-replay" in error.headers["message"], error.headers
