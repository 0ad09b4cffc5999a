#!/usr/bin/env python3
"""Resident memory per idle SSE fallback session, as BENCHMARKS.md reports it.

Starts the release broker, opens N fallback sessions (each: POST /sessions, an attached event
stream, CONNECT and a SUBSCRIBE posted, CONNECTED read), lets them sit idle, and prints the
broker's RSS growth per session. Usage: bench/scripts/sse-idle-memory.py [N] (default 2000).
"""
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time

N = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.environ.get("STAMPEDE_BIN", os.path.join(ROOT, "target", "release", "stampede"))


def rss(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+) kB", f.read()).group(1)) * 1024


def request(port, method, path, body=b""):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    return data


def main():
    data = tempfile.mkdtemp()
    broker = subprocess.Popen(
        [BIN, "--stomp-addr", "127.0.0.1:0", "--ws-addr", "127.0.0.1:0", "--http-addr", "none",
         "--data-dir", data],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    port = None
    for line in broker.stdout:
        m = re.search(r"WebSocket listening on ws://127.0.0.1:(\d+)", line)
        if m:
            port = int(m.group(1))
            break
    # Keep reading the log so the broker never blocks on a full pipe.
    threading.Thread(target=lambda: [None for _ in broker.stdout], daemon=True).start()
    time.sleep(0.5)
    before = rss(broker.pid)
    streams = []
    for i in range(N):
        answer = request(port, "POST", "/stampede-fallback/sessions")
        session = re.search(rb'"session":"([0-9a-f]+)"', answer).group(1).decode()
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(f"GET /stampede-fallback/sessions/{session}/events HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        streams.append(s)
        frames = f"CONNECT\naccept-version:1.2\nhost:/\n\n\0SUBSCRIBE\nid:1\ndestination:/topic/idle.{i}\n\n\0".encode()
        request(port, "POST", f"/stampede-fallback/sessions/{session}/frames", frames)
        got = b""
        s.settimeout(10)
        while b"data: " not in got:
            chunk = s.recv(4096)
            if not chunk:
                sys.exit(f"session {i}: the event stream ended: {got!r}")
            got += chunk
    time.sleep(2)
    after = rss(broker.pid)
    print(f"{N} idle SSE sessions (subscribed, stream attached): RSS {before} -> {after} B, "
          f"{(after - before) / N:,.0f} B per session")
    for s in streams:
        s.close()
    broker.terminate()
    broker.wait(timeout=20)


if __name__ == "__main__":
    main()
