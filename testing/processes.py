"""Stopping a server the harness started: one way for every process it runs."""

from __future__ import annotations

import signal
import subprocess


def stop_process(proc: subprocess.Popen | None, sig: int = signal.SIGTERM, timeout: float = 30.0,
                 hang_is_fault: bool = False) -> int | None:
    """Send ``sig`` and wait up to ``timeout`` s for the exit; kill what does not exit by then.

    Returns the exit status (None for no process). ``hang_is_fault``: after the kill, raise the
    wait's TimeoutExpired, for the parts under test, whose hang at shutdown is a fault; the
    servers around them (brokers, PostgreSQL) are just killed."""
    if proc is None:
        return None
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
            if hang_is_fault:
                raise
    return proc.returncode
