"""Topics (publish-subscribe) and wildcards."""

from stomp_helpers import uid


def test_topic_message_reaches_both_subscribers(make_client):
    topic = f"/topic/x-{uid()}"
    a, b, pub = make_client(), make_client(), make_client()
    sa = a.subscribe(topic)
    sb = b.subscribe(topic)
    pub.send(topic, "hello subscribers")
    (ma,) = a.wait_messages(1)
    (mb,) = b.wait_messages(1)
    for m, sub in ((ma, sa), (mb, sb)):
        assert m.body == "hello subscribers"
        assert m.headers["destination"] == topic
        assert m.headers["subscription"] == sub
        assert m.headers.get("message-id")


def test_topic_without_subscribers_drops_messages(make_client):
    topic = f"/topic/nobody-{uid()}"
    pub, late = make_client(), make_client()
    pub.send(topic, "lost")
    late.subscribe(topic)
    pub.send(topic, "seen")
    assert late.messages_before("seen") == []


def test_topic_star_wildcard_receives_child_topic(make_client):
    base = f"a{uid()}"
    sub, pub = make_client(), make_client()
    sub.subscribe(f"/topic/{base}.*")
    pub.send(f"/topic/{base}.b", "star")
    (m,) = sub.wait_messages(1)
    assert m.body == "star"
    assert m.headers["destination"] == f"/topic/{base}.b"


def test_topic_hash_wildcard_receives_child_topic(make_client):
    base = f"a{uid()}"
    sub, pub = make_client(), make_client()
    sub.subscribe(f"/topic/{base}.#")
    pub.send(f"/topic/{base}.b", "hash")
    (m,) = sub.wait_messages(1)
    assert m.body == "hash"
    assert m.headers["destination"] == f"/topic/{base}.b"


def test_topic_star_matches_one_word_hash_matches_many(make_client):
    base = f"a{uid()}"
    star, hash_, pub = make_client(), make_client(), make_client()
    star.subscribe(f"/topic/{base}.*")
    hash_.subscribe(f"/topic/{base}.#")
    pub.send(f"/topic/{base}.b.c", "deep")
    pub.send(f"/topic/{base}.b", "sentinel")
    assert [m.body for m in star.messages_before("sentinel")] == []
    assert [m.body for m in hash_.messages_before("sentinel")] == ["deep"]


def test_unsubscribe_stops_delivery(make_client):
    topic = f"/topic/unsub-{uid()}"
    c, pub = make_client(), make_client()
    s1 = c.subscribe(topic)
    pub.send(topic, "before")
    c.wait_body("before")
    c.unsubscribe(s1)
    pub.send(topic, "after")
    c.subscribe(topic)  # a second subscription proves delivery still works
    pub.send(topic, "sentinel")
    assert [m.body for m in c.messages_before("sentinel")] == ["before"]
