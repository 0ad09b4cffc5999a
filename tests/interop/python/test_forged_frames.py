"""Forged frames: whatever a publisher puts in its headers, a real stomp.py subscriber at 1.0,
1.1 or 1.2 never sees another header, another frame or another body.

The publisher writes raw bytes on its stomp.py socket, because stomp.py escapes what it sends
itself. Every test ends with a clean sentinel message, so "nothing else arrived" is checked
against everything the subscriber was sent before it, not against a timeout.
"""

import pytest

from stomp_helpers import uid

VERSIONS = ["1.0", "1.1", "1.2"]


def raw_send(client, frame: str) -> None:
    client.conn.transport.send(frame.encode())


def sentinel(make_client, destination: str) -> str:
    body = f"sentinel-{uid()}"
    make_client().send(destination, body)
    return body


@pytest.mark.parametrize("version", VERSIONS)
def test_an_escaped_newline_never_forges_a_header_or_a_body(make_client, version):
    topic = f"/topic/forge-{uid()}"
    sub = make_client(version=version)
    sub.subscribe(topic)
    pub = make_client()
    raw_send(pub, f"SEND\ndestination:{topic}\nx-evil:a\\nforged:yes\\n\\nforged body\nreceipt:nl-1\n\nreal\x00")
    pub.wait_receipt("nl-1")
    (m,) = sub.messages_before(sentinel(make_client, topic))
    assert m.body == "real"
    assert "forged" not in m.headers, m.headers
    assert m.headers["destination"] == topic
    if version == "1.0":
        assert "x-evil" not in m.headers, "1.0 cannot represent a newline: the header is left out"
    else:
        assert m.headers["x-evil"] == "a\nforged:yes\n\nforged body"


@pytest.mark.parametrize("version", VERSIONS)
def test_a_carriage_return_reaches_only_a_1_2_subscriber(make_client, version):
    topic = f"/topic/cr-{uid()}"
    sub = make_client(version=version)
    sub.subscribe(topic)
    pub = make_client()
    raw_send(pub, f"SEND\ndestination:{topic}\nx-cr:value\\r\nx-plain:kept\nreceipt:cr-1\n\nbody\x00")
    pub.wait_receipt("cr-1")
    (m,) = sub.messages_before(sentinel(make_client, topic))
    assert m.headers["x-plain"] == "kept"
    if version == "1.2":
        assert m.headers["x-cr"] == "value\r"
    else:
        # Raw, the CR before the LF reads as a CRLF line end: a different value.
        assert "x-cr" not in m.headers, m.headers


@pytest.mark.parametrize("version", VERSIONS)
def test_nul_in_a_header_is_refused_and_no_forged_message_arrives(make_client, version):
    topic, secret = f"/topic/nul-{uid()}", f"/topic/secret-{uid()}"
    sub = make_client(version=version)
    sub.subscribe(topic)
    secret_id = sub.subscribe(secret)
    evil = make_client()
    raw_send(
        evil,
        f"SEND\ndestination:{topic}\nx-evil:a\x00MESSAGE\nsubscription:{secret_id}\nmessage-id:1\n"
        f"destination:{secret}\n\nforged\x00\n\nreal\x00",
    )
    error = evil.wait_error("ERROR for a NUL in a header")
    assert "x-evil" in error.headers["message"], error.headers
    evil.wait_closed()
    assert sub.messages_before(sentinel(make_client, topic)) == []
    assert not sub.rec.errors


@pytest.mark.parametrize("version", VERSIONS)
def test_a_destination_with_a_newline_is_refused_and_reaches_no_wildcard_subscriber(make_client, version):
    prefix = f"/topic/wild{uid()}"
    sub = make_client(version=version)
    sub.subscribe(f"{prefix}.*")
    evil = make_client()
    raw_send(evil, f"SEND\ndestination:{prefix}.x\\ndestination:/topic/secret\n\nforged\x00")
    error = evil.wait_error("ERROR for a newline in a destination")
    assert "control character" in error.headers["message"], error.headers
    assert sub.messages_before(sentinel(make_client, f"{prefix}.clean")) == []
