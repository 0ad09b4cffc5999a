#!/usr/bin/env python3
"""A stomp.py "backend" driven over stdin/stdout with JSON lines.

Used by the Node and browser interop suites so that a real stomp.py client (over
TCP) talks to stompjs clients (over WebSocket) through the broker.

    python backend.py HOST PORT

stdin  (one JSON object a line):
    {"req": 1, "op": "send", "destination": "/topic/x", "body": "hi", "headers": {...}}
    {"req": 2, "op": "subscribe", "destination": "/queue/y", "id": "s1", "ack": "auto"}
    {"req": 3, "op": "quit"}
stdout (one JSON object a line):
    {"event": "connected", "version": "1.2"}
    {"event": "done", "req": 1}                      (after the broker's RECEIPT)
    {"event": "message", "destination": ..., "body": ..., "headers": {...}}
    {"event": "error", "message": ..., "body": ...}
    {"event": "disconnected"}
Every op asks for a receipt; "done" is written when it arrives (or "failed" after 10 s).
"""

import json
import os
import sys
import threading
import time

import stomp

WAIT_S = 10.0
out_lock = threading.Lock()


def emit(obj):
    with out_lock:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()


class Listener(stomp.ConnectionListener):
    def __init__(self):
        self.cond = threading.Condition()
        self.receipts = set()
        self.connected = None

    def on_connected(self, frame):
        with self.cond:
            self.connected = frame
            self.cond.notify_all()
        emit({"event": "connected", "version": frame.headers.get("version")})

    def on_receipt(self, frame):
        with self.cond:
            self.receipts.add(frame.headers.get("receipt-id"))
            self.cond.notify_all()

    def on_message(self, frame):
        emit({"event": "message", "destination": frame.headers.get("destination"),
              "body": frame.body, "headers": dict(frame.headers)})

    def on_error(self, frame):
        emit({"event": "error", "message": frame.headers.get("message"), "body": frame.body})

    def on_disconnected(self):
        emit({"event": "disconnected"})

    def wait(self, pred):
        deadline = time.monotonic() + WAIT_S
        with self.cond:
            while not pred():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(min(left, 0.25))
            return True


def main():
    host, port = sys.argv[1], int(sys.argv[2])
    extra = {"vhost": os.environ["STAMPEDE_VHOST"]} if os.environ.get("STAMPEDE_VHOST") else {}
    conn = stomp.Connection12([(host, port)], reconnect_attempts_max=1, timeout=5, **extra)
    listener = Listener()
    conn.set_listener("backend", listener)
    conn.connect(wait=False)
    if not listener.wait(lambda: listener.connected is not None):
        emit({"event": "fatal", "message": "no CONNECTED within 10 s"})
        return 1
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        cmd = json.loads(line)
        op, req = cmd.get("op"), cmd.get("req")
        if op == "quit":
            break
        receipt = f"backend-{req}"
        headers = dict(cmd.get("headers") or {})
        headers["receipt"] = receipt
        if op == "send":
            conn.send(cmd["destination"], cmd.get("body", ""), headers=headers)
        elif op == "subscribe":
            conn.subscribe(cmd["destination"], cmd.get("id") or f"backend-sub-{req}",
                           ack=cmd.get("ack", "auto"), headers=headers)
        else:
            emit({"event": "failed", "req": req, "message": f"unknown op {op}"})
            continue
        if listener.wait(lambda: receipt in listener.receipts):
            emit({"event": "done", "req": req})
        else:
            emit({"event": "failed", "req": req, "message": f"no RECEIPT {receipt} within 10 s"})
    try:
        conn.disconnect()
    except Exception:
        pass
    time.sleep(0.2)
    sys.stdout.flush()
    os._exit(0)  # do not wait for stomp.py's receiver thread


if __name__ == "__main__":
    sys.exit(main())
