"""Start and stop a real Stampede broker process for the Python interop tests.

The launcher runs the release binary (``target/release/stampede``, or the path in
``STAMPEDE_BIN``) on two free loopback ports with a fresh data directory, waits
(bounded) until both listeners accept connections, and kills it afterwards.

To run the suites against a broker that is already running (e.g. to compare with another
broker), set STAMPEDE_EXTERNAL_STOMP=host:port and STAMPEDE_EXTERNAL_WS=ws://host:port/path;
then nothing is spawned.

Also usable from the command line (used by the browser suite's backend):
    python stampede_launcher.py        # prints "stomp_port ws_port" and runs until stdin closes
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[3]
DEFAULT_BIN = REPO_ROOT / "target" / "release" / "stampede"
START_TIMEOUT_S = 15.0


def broker_binary() -> Path:
    return Path(os.environ.get("STAMPEDE_BIN") or DEFAULT_BIN)


def free_port() -> int:
    """A loopback TCP port that was free a moment ago (bind to port 0, then close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_accepts(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


class Broker:
    """One broker child process. Use as a context manager or call start()/stop()."""

    def __init__(self, ws_path: str = "/ws", extra_args: list[str] | None = None):
        self.binary = broker_binary()
        self.ws_path = ws_path
        self.extra_args = list(extra_args or [])
        self.stomp_port = 0
        self.ws_port = 0
        self.data_dir: str | None = None
        self.log_path: str | None = None
        self.proc: subprocess.Popen | None = None
        self._log_file = None

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.ws_port}{self.ws_path}"

    @property
    def host_and_port(self) -> tuple[str, int]:
        return ("127.0.0.1", self.stomp_port)

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path or not os.path.exists(self.log_path):
            return "(no broker log)"
        with open(self.log_path, "rb") as f:
            data = f.read().decode("utf-8", errors="replace")
        return "\n".join(data.splitlines()[-lines:]) or "(broker log is empty)"

    def start(self) -> "Broker":
        external = os.environ.get("STAMPEDE_EXTERNAL_STOMP")
        if external:
            host, _, port = external.rpartition(":")
            self.stomp_port = int(port)
            ws = os.environ.get("STAMPEDE_EXTERNAL_WS", "")
            if ws:
                rest = ws.split("://", 1)[1]
                hostport, _, path = rest.partition("/")
                self.ws_port = int(hostport.rpartition(":")[2])
                self.ws_path = "/" + path
            return self
        if not self.binary.is_file() or not os.access(self.binary, os.X_OK):
            raise RuntimeError(
                f"broker binary not found at {self.binary}; build it with "
                "`cargo build --release -p stampede-broker` or set STAMPEDE_BIN"
            )
        self.data_dir = tempfile.mkdtemp(prefix="stampede-interop-")
        self.log_path = os.path.join(self.data_dir, "broker.log")
        # Retry a couple of times in case another process grabbed a "free" port.
        last_error = ""
        for _attempt in range(3):
            self.stomp_port, self.ws_port = free_port(), free_port()
            while self.ws_port == self.stomp_port:
                self.ws_port = free_port()
            data = os.path.join(self.data_dir, f"data-{_attempt}")
            os.makedirs(data)
            cmd = [
                str(self.binary),
                "--stomp-addr", f"127.0.0.1:{self.stomp_port}",
                "--ws-addr", f"127.0.0.1:{self.ws_port}",
                "--http-addr", "none",
                "--data-dir", data,
                "--log-level", "warn",
            ]
            if self.ws_path != "/ws":
                cmd += ["--ws-path", self.ws_path]
            cmd += self.extra_args
            self._log_file = open(self.log_path, "ab")
            self._log_file.write(("$ " + " ".join(cmd) + "\n").encode())
            self._log_file.flush()
            self.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=self._log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            deadline = time.monotonic() + START_TIMEOUT_S
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break
                if port_accepts(self.stomp_port) and port_accepts(self.ws_port):
                    return self
                time.sleep(0.05)
            if self.proc.poll() is None:
                last_error = f"broker did not accept on ports {self.stomp_port}/{self.ws_port} within {START_TIMEOUT_S}s"
                self._kill()
                break  # a hung start is not a port race: do not retry
            last_error = f"broker exited early with code {self.proc.returncode}"
            self._kill()
        raise RuntimeError(f"{last_error}\n--- broker log ---\n{self.log_tail()}")

    def _kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGTERM)
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def alive(self) -> bool:
        if os.environ.get("STAMPEDE_EXTERNAL_STOMP"):
            return True
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        self._kill()
        if self.data_dir and not os.environ.get("STAMPEDE_KEEP_DATA"):
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> "Broker":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


if __name__ == "__main__":
    with Broker() as b:
        print(b.stomp_port, b.ws_port, flush=True)
        sys.stdin.read()
