"""Headers and bodies travel unchanged."""

from stomp_helpers import uid


def test_user_headers_arrive_unchanged_including_colons_and_escapes(make_client):
    q = f"/queue/hdr-{uid()}"
    pub, c = make_client(), make_client()
    c.subscribe(q)
    headers = {
        "x-custom": "a:b",
        "x-newline": "line1\nline2",
        "x-backslash": "C:\\path\\file",
        "x-unicode": "gr\u00fc\u00dfe \u2603",
    }
    pub.send(q, "with headers", **headers)
    (m,) = c.wait_messages(1)
    for k, v in headers.items():
        assert m.headers.get(k) == v, f"header {k}: sent {v!r}, got {m.headers.get(k)!r}"


def test_repeated_header_first_value_wins(make_client):
    q = f"/queue/hdr-{uid()}"
    pub, c = make_client(), make_client()
    c.subscribe(q)
    # stomp.py sends dict headers, so build the raw frame by hand on its socket.
    frame = (f"SEND\ndestination:{q}\nx-dup:first\nx-dup:second\nreceipt:dup-1\n\nbody\x00").encode()
    pub.conn.transport.send(frame)
    pub.wait_receipt("dup-1")
    (m,) = c.wait_messages(1)
    assert m.headers.get("x-dup") == "first"


def test_binary_body_with_nul_bytes_and_content_length_arrives_intact(make_client):
    q = f"/queue/bin-{uid()}"
    pub = make_client(auto_decode=False)
    c = make_client(auto_decode=False)
    c.subscribe(q)
    body = bytes(range(256)) * 4 + b"\x00\x00end\x00"
    pub.send(q, body, **{"content-type": "application/octet-stream"})
    (m,) = c.wait_messages(1)
    assert isinstance(m.body, bytes)
    assert m.body == body, f"body differs: got {len(m.body)} bytes, sent {len(body)}"
    assert m.headers.get("content-length") == str(len(body))
    assert m.headers.get("content-type") == "application/octet-stream"


def test_large_text_body_arrives_intact(make_client):
    q = f"/queue/big-{uid()}"
    pub, c = make_client(), make_client()
    c.subscribe(q)
    body = "".join(chr(ord("a") + i % 26) for i in range(256 * 1024))
    pub.send(q, body)
    (m,) = c.wait_messages(1)
    assert m.body == body
