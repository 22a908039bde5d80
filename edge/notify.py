"""systemd's notify protocol (sd_notify) without a dependency: datagrams to ``$NOTIFY_SOCKET``.

Under ``Type=notify`` systemd passes the path of a unix datagram socket in ``NOTIFY_SOCKET``
(a file path, or an abstract socket written with a leading ``@``) and, with ``WatchdogSec=``,
the watchdog period in ``WATCHDOG_USEC``. The daemon says ``READY=1`` once it serves the POS,
``STATUS=...`` lines that ``systemctl status`` shows, ``WATCHDOG=1`` from its main loop at half
the watchdog period, and ``STOPPING=1`` when it shuts down. If the pings stop (a hung main
loop), systemd kills the daemon with SIGABRT and ``Restart=on-failure`` starts it again.

Outside systemd (no ``NOTIFY_SOCKET``) :meth:`SystemdNotifier.from_env` gives a notifier whose
methods do nothing. A failed send never raises: the daemon must go on serving the till, so the
first failure is logged at warning and later ones are dropped quietly.

The caller pings with :meth:`SystemdNotifier.ping_if_due` once per iteration of its main loop,
after the loop's real work, so a loop stuck anywhere stops the pings. Two pings are then up
to ``watchdog_interval_s`` plus one loop period apart, which must stay under ``WatchdogSec``:
the daemon loops every second against a 15 s interval (``WatchdogSec=30s``).

Threading: a notifier is used from the daemon's main thread only (start-up, the housekeeping
loop, shutdown); other threads' state changes reach it through that loop.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import time
from typing import Mapping

log = logging.getLogger(__name__)

SEND_TIMEOUT_S = 1.0


class SystemdNotifier:
    def __init__(self, address: str | None = None, watchdog_interval_s: float | None = None):
        """``address`` as in NOTIFY_SOCKET (None: a no-op notifier); ``watchdog_interval_s``: how often to ping."""
        self.enabled = bool(address)
        self.watchdog_interval_s = watchdog_interval_s if self.enabled else None
        # Abstract socket names start with a NUL byte; systemd writes it as '@'.
        self._address = "\0" + address[1:] if address and address.startswith("@") else address
        self._sock: socket.socket | None = None
        self._warned = False
        self._last_ping = -math.inf

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "SystemdNotifier":
        """A notifier for what systemd set in the environment (os.environ by default)."""
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET") or None
        interval = None
        watchdog_pid = env.get("WATCHDOG_PID", "")
        # WATCHDOG_PID names the process systemd expects pings from; a child that inherited
        # the variables must not ping on its parent's behalf.
        if not watchdog_pid or watchdog_pid == str(os.getpid()):
            try:
                usec = int(env.get("WATCHDOG_USEC", ""))
            except ValueError:
                usec = 0
            if usec > 0:
                interval = usec / 2e6  # ping at half the period, as sd_watchdog_enabled(3) advises
        return cls(address, interval)

    # --- the messages ------------------------------------------------------------------------

    def ready(self, status: str = "") -> None:
        self._send("READY=1", status)

    def status(self, text: str) -> None:
        self._send(None, text)

    def watchdog(self) -> None:
        if self._send("WATCHDOG=1"):
            self._last_ping = time.monotonic()

    def stopping(self, status: str = "") -> None:
        self._send("STOPPING=1", status)

    def ping_if_due(self, now: float) -> bool:
        """WATCHDOG=1 if watchdog_interval_s has passed since the last ping (``now``: time.monotonic())."""
        if self.watchdog_interval_s is None or now - self._last_ping < self.watchdog_interval_s:
            return False
        # A failed ping is retried on the next call: waiting a whole interval would let the
        # watchdog expire after a single lost datagram.
        sent = self._send("WATCHDOG=1")
        if sent:
            self._last_ping = now
        return sent

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    # --- the socket ----------------------------------------------------------------------------

    def _send(self, state: str | None, status: str = "") -> bool:
        if not self.enabled:
            return False
        lines = [state] if state else []
        if status:
            lines.append("STATUS=" + " ".join(status.split()))  # one line: newlines separate fields
        if not lines:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                # A full receive queue delays a message this long at most: never hang the main loop.
                self._sock.settimeout(SEND_TIMEOUT_S)
            self._sock.sendto("\n".join(lines).encode(), self._address)
            return True
        except OSError as exc:
            if not self._warned:
                self._warned = True
                log.warning("systemd notify socket %s: %s (further failures are not logged)",
                            self._address.replace("\0", "@"), exc)
            return False


__all__ = ["SystemdNotifier"]
