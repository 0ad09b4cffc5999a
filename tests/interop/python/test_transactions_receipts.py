"""Transactions (BEGIN/COMMIT/ABORT) and receipts.

Transactional SENDs ask for no receipt (RabbitMQ, for one, answers those only at COMMIT);
the receipt of the following COMMIT/ABORT proves they were processed, frames being in order.
"""

from stomp_helpers import uid


def test_transaction_abort_delivers_nothing(make_client):
    q = f"/queue/tx-{uid()}"
    pub, c = make_client(), make_client()
    c.subscribe(q)
    pub.conn.begin(transaction="tx-abort", receipt="begin-abort")
    pub.wait_receipt("begin-abort")
    pub.send(q, "tx-1", transaction="tx-abort", receipt=False)
    pub.send(q, "tx-2", transaction="tx-abort", receipt=False)
    pub.conn.abort("tx-abort", receipt="abort-1")
    pub.wait_receipt("abort-1")
    pub.send(q, "sentinel")
    assert c.messages_before("sentinel") == []
    assert not pub.rec.errors


def test_transaction_commit_delivers_only_on_commit(make_client):
    q = f"/queue/tx-{uid()}"
    pub, c = make_client(), make_client()
    c.subscribe(q)
    pub.conn.begin(transaction="tx-commit", receipt="begin-commit")
    pub.wait_receipt("begin-commit")
    pub.send(q, "in-tx", transaction="tx-commit", receipt=False)
    pub.send(q, "outside-tx")
    assert c.messages_before("outside-tx") == [], "transactional SEND delivered before COMMIT"
    pub.conn.commit("tx-commit", receipt="commit-1")
    pub.wait_receipt("commit-1")
    m = c.wait_body("in-tx")
    assert m.headers["destination"] == q
    assert not pub.rec.errors


def test_transaction_still_open_at_disconnect_is_aborted(make_client):
    q = f"/queue/tx-{uid()}"
    pub, c = make_client(), make_client()
    c.subscribe(q)
    pub.conn.begin(transaction="tx-open", receipt="begin-open")
    pub.wait_receipt("begin-open")
    pub.send(q, "never", transaction="tx-open", receipt=False)
    pub.disconnect()
    other = make_client()
    other.send(q, "sentinel")
    assert c.messages_before("sentinel") == []


def test_receipts_are_returned_for_send_and_subscribe(make_client):
    c = make_client()
    q = f"/queue/receipts-{uid()}"
    c.conn.subscribe(q, "sub-receipt", headers={"receipt": "subscribe-receipt-1"})
    c.wait_receipt("subscribe-receipt-1")
    c.conn.send(q, "x", headers={"receipt": "send-receipt-1"})
    c.wait_receipt("send-receipt-1")
    c.wait_body("x")
    assert c.rec.receipts[:2] == ["subscribe-receipt-1", "send-receipt-1"]
