"""`agegate-backend ingest` as its own process, as systemd would run it, for the backend's tests and benchmark."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from pathlib import Path

from .processes import stop_process


class IngestProcess:
    """`agegate-backend ingest` as its own process, as systemd would run it."""

    def __init__(self, tmp: Path, url: str, brokers: list, client_id: str = "backend-test", extra: tuple[str, ...] = ()):
        """Into the database at ``url``, from each of ``brokers`` (anything with ``port``, on 127.0.0.1)."""
        self.url, self.log_path = url, tmp / f"ingest-{uuid.uuid4().hex[:6]}.log"
        self.args = [sys.executable, "-m", "agegate.backend", "--db", url, "ingest", "--client-id", client_id]
        for b in brokers:
            self.args += ["--broker", f"127.0.0.1:{b.port}"]
        self.args += list(extra)
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30.0, settle_s: float = 0.3) -> "IngestProcess":
        """Start it and return once it has connected, and ``settle_s`` later (its SUBACK)."""
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.args, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while b"connected to" not in self.log_path.read_bytes():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ingest did not connect:\n{self.log()}")
            time.sleep(0.1)
        time.sleep(settle_s)
        return self

    def stop(self) -> int:
        try:
            return stop_process(self.proc, hang_is_fault=True) or 0
        finally:
            self._log.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")
