"""``agegate-edge run`` as its own process, as systemd starts it: configured through AGEGATE_*
variables only, its output in a log file, asked over its HTTP API."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Mapping, NamedTuple

import httpx

from .net import HOST, free_port
from .processes import stop_process

# What the tests run the daemon with: their own till, a short face wait, a stats event every second.
TEST_SETTINGS = {"store_id": "store-7", "till_id": "till-3", "face_wait_s": 3, "stats_interval_s": 1, "log_level": "INFO"}


class Address(NamedTuple):
    """A broker's address, where no :class:`~agegate.testing.brokers.Mosquitto` object stands for it."""

    host: str
    port: int


class DaemonProcess:
    """The till daemon on ``camera`` (a video file) with ``model_dir``'s bundle (None: the shipped one)
    and ``broker`` (anything with ``host`` and ``port``).

    The environment starts from ``base_env`` (only PATH by default, so that a developer's AGEGATE_*
    variables do not leak in), then ``defaults``, then ``settings`` (``face_wait_s=1`` sets
    AGEGATE_FACE_WAIT_S), then ``env`` as given. ``self.env`` may still be changed before start().
    With a ``token``, every request carries ``Authorization: Bearer`` as the POS's would. Its output
    goes to ``tmp/daemon.log``, or with ``log_to_terminal`` (the demo) to this process's own."""

    def __init__(self, tmp: Path, *, broker, camera: Path, model_dir: Path | None = None,
                 defaults: Mapping[str, object] = TEST_SETTINGS, base_env: Mapping[str, str] | None = None,
                 env: Mapping[str, str] | None = None, token: str | None = None, log_to_terminal: bool = False,
                 **settings):
        self.http_port = free_port()
        self.log_path = tmp / "daemon.log"
        self.log_to_terminal = log_to_terminal
        if token:
            settings["http_token"] = token
        self.auth = {"Authorization": f"Bearer {token}"} if token else {}
        self.env = dict(base_env) if base_env is not None else {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        self.env.update({
            "AGEGATE_CAMERA": str(camera),
            "AGEGATE_MQTT_HOST": broker.host,
            "AGEGATE_MQTT_PORT": str(broker.port),
            "AGEGATE_HTTP_PORT": str(self.http_port),
            "AGEGATE_STATE_DIR": str(tmp / "state"),
        })
        if model_dir is not None:
            self.env["AGEGATE_MODEL_DIR"] = str(model_dir)
        self.env.update({f"AGEGATE_{k.upper()}": str(v) for k, v in {**defaults, **settings}.items()})
        self.env.update(env or {})
        self.url = f"http://{settings.get('http_host', HOST)}:{self.http_port}"
        self.proc: subprocess.Popen | None = None
        self.preexec_fn = None  # e.g. lower RLIMIT_NOFILE in the child, as a unit's LimitNOFILE= would

    def launch(self) -> "DaemonProcess":
        """Start the process and return at once (start-up timing starts here)."""
        self._log = None if self.log_to_terminal else open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "agegate.edge.cli", "run"], env=self.env,
                                     stdout=self._log, stderr=self._log and subprocess.STDOUT, preexec_fn=self.preexec_fn)
        return self

    def start(self, wait_for_face: bool = False, wait_streaming: bool = True, wait_connected: bool = False,
              timeout: float = 60.0) -> "DaemonProcess":
        """Start it and wait until it serves /v1/status and, as asked, streams from the camera, has
        seen the face, is connected to the broker."""
        self.launch()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.proc.returncode}:\n{self.log()}")
            try:
                status = httpx.get(f"{self.url}/v1/status", headers=self.auth, timeout=2).json()
                if ((status["camera"]["state"] == "streaming" or not wait_streaming)
                        and (status["customer"] or not wait_for_face)
                        and (status["mqtt"]["connected"] or not wait_connected)):
                    return self
            except (httpx.HTTPError, KeyError, ValueError):
                pass
            time.sleep(0.2)
        raise RuntimeError(f"daemon not ready in {timeout:g} s:\n{self.log_tail()}")

    def get(self, path: str, **kw) -> httpx.Response:
        return httpx.get(self.url + path, headers=self.auth, timeout=30, **kw)

    def request(self, method: str, path: str, **kw) -> httpx.Response:
        return httpx.request(method, self.url + path, headers={**self.auth, **kw.pop("headers", {})}, timeout=30, **kw)

    def pos(self, type_: str, tx: str, restricted: bool = False, category: str = "alcohol") -> httpx.Response:
        return self.request("POST", "/v1/pos", json={"type": type_, "transaction_id": tx, "category": category,
                                                     "restricted": restricted})

    def status(self) -> dict:
        return self.get("/v1/status").json()

    def stop(self, sig=signal.SIGTERM, timeout: float = 20) -> int:
        """Signal it and wait for its exit status; one that does not exit in ``timeout`` s is killed and
        the wait's TimeoutExpired raised (a hang at shutdown is a fault)."""
        try:
            return stop_process(self.proc, sig, timeout, hang_is_fault=True) or 0
        finally:
            if self._log is not None:
                self._log.close()

    def rss_kb(self) -> int:
        for line in open(f"/proc/{self.proc.pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def open_fds(self) -> list[str]:
        """Where each of the daemon's open descriptors points (socket:[…], a path, pipe:[…])."""
        fd_dir = Path(f"/proc/{self.proc.pid}/fd")
        out = []
        for fd in fd_dir.iterdir():
            try:
                out.append(os.readlink(fd))
            except OSError:
                pass
        return out

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log().splitlines()[-lines:])
