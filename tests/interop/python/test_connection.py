"""Connecting and disconnecting with real stomp.py connections (1.2, 1.1 and 1.0)."""

from stomp_helpers import uid


def test_connect_12_negotiates_version_and_reports_server_headers(make_client):
    c = make_client(connect=False)
    frame = c.connect()
    assert frame.headers.get("version") == "1.2"
    assert frame.headers.get("session"), "CONNECTED must carry a session header"
    assert frame.headers.get("server"), "CONNECTED should carry a server header"
    assert "heart-beat" in frame.headers


def test_connect_with_connect_command_instead_of_stomp(make_client):
    c = make_client(connect=False)
    # stomp.py 1.2 sends STOMP by default; real clients also use CONNECT.
    c.conn.transport.start()
    c.conn.send_frame("CONNECT", {"accept-version": "1.2", "host": "/"})
    frame = c.rec.wait_until(lambda: c.rec.connected_frame or (c.rec.errors and c.rec.errors[0]), "CONNECTED")
    assert frame.cmd == "CONNECTED" and frame.headers.get("version") == "1.2"


def test_disconnect_with_receipt_gets_receipt_then_close(make_client):
    c = make_client()
    c.disconnect(check_receipt=True)
    assert c.rec.disconnected
    assert not c.rec.errors


def test_stomp11_connection_pubsub_and_client_individual_ack(make_client):
    c = make_client(version="1.1")
    assert c.rec.connected_frame.headers.get("version") == "1.1"
    q = f"/queue/v11-{uid()}"
    c.subscribe(q, ack="client-individual")
    c.send(q, "one-dot-one")
    (msg,) = c.wait_messages(1)
    assert msg.body == "one-dot-one"
    assert msg.headers["destination"] == q
    assert msg.headers.get("message-id")
    assert msg.headers.get("subscription")
    c.ack(msg)  # 1.1 ACK: subscription + message-id
    assert not c.rec.errors


def test_stomp10_connection_send_and_receive_on_queue(make_client):
    c = make_client(version="1.0")
    version = c.rec.connected_frame.headers.get("version")
    assert version in (None, "1.0"), f"1.0 client negotiated {version}"
    q = f"/queue/v10-{uid()}"
    c.subscribe(q)
    c.send(q, "one-dot-oh")
    (msg,) = c.wait_messages(1)
    assert msg.body == "one-dot-oh"
    assert msg.headers["destination"] == q
    assert not c.rec.errors
