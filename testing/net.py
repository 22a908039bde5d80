"""Loopback ports: one that is free, and waiting until a server listens on one."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

HOST = "127.0.0.1"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (the kernel's pick)."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_listening(port: int, proc: subprocess.Popen | None = None, what: str = "the server", log: Path | None = None,
                   timeout: float = 30.0) -> None:
    """Return once 127.0.0.1:port accepts a connection; raise, with the end of ``log``, if ``proc``
    exits first or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection((HOST, port), timeout=0.2).close()
            return
        except OSError:
            if proc is not None and proc.poll() is not None:
                tail = log.read_text(errors="replace")[-2000:] if log is not None and log.exists() else ""
                raise RuntimeError(f"{what} exited with {proc.returncode}: {tail}") from None
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {HOST}:{port} within {timeout:g} s")


def wait_until(condition, timeout: float = 30.0, what: str = "condition", every: float = 0.1):
    """Poll ``condition()`` until it returns something truthy, and return that; AssertionError
    naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")
