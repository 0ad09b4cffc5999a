"""ERROR frames, and the RabbitMQ conventions clients rely on (/temp-queue, /amq/queue)."""

from stomp_helpers import uid


def test_send_without_destination_gets_error_with_message_then_close(make_client):
    c = make_client()
    c.frame("SEND", {}, "no destination")
    err = c.wait_error("ERROR for SEND without destination")
    assert err.cmd == "ERROR"
    assert err.headers.get("message"), f"ERROR needs a message header: {err.headers}"
    c.wait_closed("the broker to close the connection after ERROR")


def test_error_echoes_receipt_id_of_the_offending_frame(make_client):
    c = make_client()
    c.frame("SEND", {"receipt": "bad-send-1"}, "no destination")
    err = c.wait_error("ERROR for SEND without destination")
    assert err.headers.get("receipt-id") == "bad-send-1"
    c.wait_closed()


def test_subscribe_to_missing_amq_queue_gets_error(make_client):
    c = make_client()
    c.frame("SUBSCRIBE", {"destination": f"/amq/queue/missing-{uid()}", "id": "s-missing", "receipt": "amq-1"})
    err = c.wait_error("ERROR for SUBSCRIBE to a missing /amq/queue")
    assert err.headers.get("message")
    assert "amq-1" not in c.rec.receipts, "got a RECEIPT for a failed SUBSCRIBE"
    c.wait_closed()


def test_temp_queue_reply_to_request_reply_between_two_connections(make_client):
    requests = f"/queue/requests-{uid()}"
    responder, requester = make_client(), make_client()
    responder.subscribe(requests)
    requester.send(requests, "ping", **{"reply-to": "/temp-queue/replies", "correlation-id": "c-1"})
    (req,) = responder.wait_messages(1)
    reply_to = req.headers.get("reply-to")
    assert req.body == "ping"
    assert reply_to, "request lost its reply-to header"
    assert reply_to != "/temp-queue/replies", "reply-to should be rewritten to a routable destination"
    responder.send(reply_to, "pong", **{"correlation-id": req.headers.get("correlation-id", "")})
    (reply,) = requester.wait_messages(1, what="the reply on the temp queue")
    assert reply.body == "pong"
    assert reply.headers.get("subscription") == "/temp-queue/replies"
    assert reply.headers.get("correlation-id") == "c-1"
