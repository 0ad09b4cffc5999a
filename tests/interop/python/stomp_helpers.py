"""Thin, bounded-wait helpers around real stomp.py connections.

stomp.py's own blocking calls (connect(wait=True), disconnect(receipt=...)) wait
without a time limit; these helpers never do: every wait has a timeout (<= 10 s)
and fails the test with a description of what was being waited for.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
import uuid

import stomp

WAIT_S = 10.0
_counter = itertools.count(1)


def uid() -> str:
    """A short unique suffix so every test uses its own destinations."""
    return uuid.uuid4().hex[:10]


class Recorder(stomp.ConnectionListener):
    """Records every frame a connection receives (and sends), thread-safely."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.connected_frame = None
        self.messages: list = []
        self.receipts: list[str] = []
        self.errors: list = []
        self.sent: list = []
        self.heartbeats = 0
        self.disconnected = False

    def _add(self, fn) -> None:
        with self.cond:
            fn()
            self.cond.notify_all()

    def on_connected(self, frame) -> None:
        self._add(lambda: setattr(self, "connected_frame", frame))

    def on_message(self, frame) -> None:
        self._add(lambda: self.messages.append(frame))

    def on_receipt(self, frame) -> None:
        self._add(lambda: self.receipts.append(frame.headers.get("receipt-id")))

    def on_error(self, frame) -> None:
        self._add(lambda: self.errors.append(frame))

    def on_heartbeat(self) -> None:
        def inc():
            self.heartbeats += 1
        self._add(inc)

    def on_disconnected(self) -> None:
        self._add(lambda: setattr(self, "disconnected", True))

    def on_send(self, frame) -> None:
        self._add(lambda: self.sent.append(frame))

    def wait_until(self, predicate, what: str, timeout: float = WAIT_S):
        """Wait until predicate() (called under the lock) is truthy; return its value."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                value = predicate()
                if value:
                    return value
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"timed out after {timeout}s waiting for {what}; "
                        f"messages={[_describe(m) for m in self.messages]} "
                        f"errors={[_describe(e) for e in self.errors]} "
                        f"receipts={self.receipts} disconnected={self.disconnected}"
                    )
                self.cond.wait(min(remaining, 0.25))


def _describe(frame) -> str:
    body = frame.body
    if isinstance(body, (bytes, bytearray)) and len(body) > 60:
        body = bytes(body[:60]) + b"..."
    elif isinstance(body, str) and len(body) > 60:
        body = body[:60] + "..."
    return f"{frame.cmd}{dict(frame.headers)}{body!r}"


class Client:
    """One real stomp.py connection plus a Recorder, with bounded-wait helpers."""

    CLASSES = {
        "1.0": stomp.Connection10,
        "1.1": stomp.Connection11,
        "1.2": stomp.Connection12,
    }

    def __init__(self, broker, version: str = "1.2", auto_decode: bool = True, vhost: str | None = None):
        self.version = version
        kwargs = dict(
            reconnect_attempts_max=1,
            reconnect_sleep_initial=0.05,
            timeout=5,
            auto_decode=auto_decode,
        )
        if version != "1.0" and os.environ.get("STAMPEDE_VHOST"):
            kwargs["vhost"] = os.environ["STAMPEDE_VHOST"]  # e.g. "/" when comparing with RabbitMQ
        if vhost is not None:
            kwargs["vhost"] = vhost
        self.conn = self.CLASSES[version]([broker.host_and_port], **kwargs)
        self.rec = Recorder()
        self.conn.set_listener("recorder", self.rec)

    # --- connection lifecycle -------------------------------------------------

    def connect(self, expect_error: bool = False, **headers):
        """Send CONNECT (or STOMP) and wait for CONNECTED (or ERROR when expected)."""
        self.conn.connect(wait=False, headers=headers or None)
        if expect_error:
            return self.rec.wait_until(lambda: self.rec.errors and self.rec.errors[0], "ERROR to CONNECT")
        frame = self.rec.wait_until(
            lambda: self.rec.connected_frame or (self.rec.errors and self.rec.errors[0]),
            "CONNECTED",
        )
        assert frame.cmd == "CONNECTED", f"expected CONNECTED, got {_describe(frame)}"
        return frame

    def disconnect(self, check_receipt: bool = True) -> None:
        """DISCONNECT with a receipt; wait (bounded) for the receipt and the socket to close."""
        if self.rec.disconnected or not self.conn.is_connected():
            self.close()
            return
        before = len(self.rec.sent)
        self.conn.disconnect()  # stomp.py adds its own receipt; it closes the socket when it arrives
        sent = self.rec.wait_until(
            lambda: [f for f in self.rec.sent[before:] if f.cmd == "DISCONNECT"], "DISCONNECT to be sent"
        )
        receipt = sent[0].headers.get("receipt")
        if check_receipt:
            self.rec.wait_until(lambda: receipt in self.rec.receipts, f"RECEIPT {receipt} for DISCONNECT")
            self.rec.wait_until(lambda: self.rec.disconnected, "connection to close after DISCONNECT receipt")
        self.close()

    def close(self) -> None:
        """Drop the socket without a DISCONNECT (like a crashed client)."""
        try:
            self.conn.transport.disconnect_socket()
        except Exception:
            pass
        try:
            self.conn.transport.running = False
        except Exception:
            pass

    # --- frames -------------------------------------------------------------

    def _receipt_id(self) -> str:
        return f"r-{next(_counter)}-{uid()}"

    def wait_receipt(self, receipt: str, what: str = "") -> None:
        self.rec.wait_until(lambda: receipt in self.rec.receipts, f"RECEIPT {receipt} {what}".strip())

    def send(self, destination: str, body, receipt: bool = True, **headers) -> None:
        rid = self._receipt_id() if receipt else None
        if rid:
            headers["receipt"] = rid
        self.conn.send(destination, body, headers=headers)
        if rid:
            self.wait_receipt(rid, f"for SEND to {destination}")

    def subscribe(self, destination: str, id: str | None = None, ack: str = "auto",
                  receipt: bool = True, **headers) -> str:
        sub_id = id or f"sub-{next(_counter)}"
        rid = self._receipt_id() if receipt else None
        if rid:
            headers["receipt"] = rid
        if self.version == "1.0":
            self.conn.subscribe(destination, id=sub_id, ack=ack, headers=headers)
        else:
            self.conn.subscribe(destination, sub_id, ack=ack, headers=headers)
        if rid:
            self.wait_receipt(rid, f"for SUBSCRIBE to {destination}")
        return sub_id

    def unsubscribe(self, sub_id: str, receipt: bool = True) -> None:
        rid = self._receipt_id() if receipt else None
        headers = {"receipt": rid} if rid else {}
        if self.version == "1.0":
            self.conn.unsubscribe(id=sub_id, headers=headers)
        else:
            self.conn.unsubscribe(sub_id, headers=headers)
        if rid:
            self.wait_receipt(rid, "for UNSUBSCRIBE")

    def ack(self, msg, receipt: bool = True, transaction: str | None = None) -> None:
        rid = self._receipt_id() if receipt else None
        if self.version == "1.2":
            self.conn.ack(msg.headers["ack"], transaction=transaction, receipt=rid)
        elif self.version == "1.0":
            self.conn.ack(msg.headers["message-id"], transaction=transaction, receipt=rid)
        else:
            self.conn.ack(msg.headers["message-id"], msg.headers["subscription"],
                          transaction=transaction, receipt=rid)
        if rid:
            self.wait_receipt(rid, "for ACK")

    def nack(self, msg, receipt: bool = True, **headers) -> None:
        rid = self._receipt_id() if receipt else None
        if self.version == "1.2":
            self.conn.nack(msg.headers["ack"], receipt=rid, **headers)
        else:
            self.conn.nack(msg.headers["message-id"], msg.headers["subscription"], receipt=rid, **headers)
        if rid:
            self.wait_receipt(rid, "for NACK")

    def frame(self, command: str, headers: dict, body="") -> None:
        """Send an arbitrary frame through stomp.py's encoder."""
        self.conn.send_frame(command, dict(headers), body)

    # --- receiving ----------------------------------------------------------

    def wait_messages(self, n: int, what: str = "", timeout: float = WAIT_S, start: int = 0) -> list:
        msgs = self.rec.wait_until(
            lambda: len(self.rec.messages) - start >= n and self.rec.messages[start:],
            what or f"{n} MESSAGE frame(s)",
            timeout,
        )
        return list(msgs)

    def wait_body(self, body, timeout: float = WAIT_S):
        """Wait for the first MESSAGE with this body; return it."""
        def find():
            for m in self.rec.messages:
                if m.body == body:
                    return m
            return None
        return self.rec.wait_until(find, f"MESSAGE with body {body!r}", timeout)

    def messages_before(self, sentinel_body) -> list:
        """All MESSAGEs received before the one carrying sentinel_body (which must arrive)."""
        self.wait_body(sentinel_body)
        with self.rec.cond:
            out = []
            for m in self.rec.messages:
                if m.body == sentinel_body:
                    return out
                out.append(m)
        return out

    def bodies(self) -> list:
        with self.rec.cond:
            return [m.body for m in self.rec.messages]

    def wait_error(self, what: str = "ERROR frame"):
        return self.rec.wait_until(lambda: self.rec.errors and self.rec.errors[0], what)

    def wait_closed(self, what: str = "the broker to close the connection"):
        return self.rec.wait_until(lambda: self.rec.disconnected, what)
