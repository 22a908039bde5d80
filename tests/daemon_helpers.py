"""Start the real daemon (`agegate-edge run`) as a process, as systemd would."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from conftest import free_port


class DaemonProcess:
    def __init__(self, tmp: Path, *, broker, camera: Path, model_dir: Path, **settings):
        self.http_port = free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.log_path = tmp / "daemon.log"
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "AGEGATE_STORE_ID": "store-7",
            "AGEGATE_TILL_ID": "till-3",
            "AGEGATE_CAMERA": str(camera),
            "AGEGATE_MODEL_DIR": str(model_dir),
            "AGEGATE_MQTT_HOST": broker.host,
            "AGEGATE_MQTT_PORT": str(broker.port),
            "AGEGATE_HTTP_PORT": str(self.http_port),
            "AGEGATE_STATE_DIR": str(tmp / "state"),
            "AGEGATE_FACE_WAIT_S": "3",
            "AGEGATE_STATS_INTERVAL_S": "1",
            "AGEGATE_LOG_LEVEL": "INFO",
        }
        self.env.update({f"AGEGATE_{k.upper()}": str(v) for k, v in settings.items()})
        self.proc: subprocess.Popen | None = None
        self.preexec_fn = None  # e.g. lower RLIMIT_NOFILE in the child, as a unit's LimitNOFILE= would

    def start(self, wait_for_face: bool = False, wait_streaming: bool = True) -> "DaemonProcess":
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "agegate.edge.cli", "run"], env=self.env,
                                     stdout=self._log, stderr=subprocess.STDOUT, preexec_fn=self.preexec_fn)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.proc.returncode}:\n{self.log()}")
            try:
                status = httpx.get(f"{self.url}/v1/status", timeout=1).json()
                streaming = status["camera"]["state"] == "streaming" or not wait_streaming
                if streaming and (not wait_for_face or status["customer"]):
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"daemon not ready in 60 s:\n{self.log()}")

    def pos(self, type_: str, tx: str, restricted: bool = False, category: str = "alcohol") -> httpx.Response:
        return httpx.post(f"{self.url}/v1/pos", json={"type": type_, "transaction_id": tx, "category": category,
                                                      "restricted": restricted}, timeout=30)

    def stop(self, sig=signal.SIGTERM, timeout: float = 20) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout)
        self._log.close()
        return self.proc.returncode

    def status(self) -> dict:
        return httpx.get(f"{self.url}/v1/status", timeout=10).json()

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
