"""The systemd service: the unit passes systemd-analyze, its exposure stays at or under 2.0,
and the daemon speaks the notify protocol (READY, STATUS, WATCHDOG, STOPPING) over a real
unix datagram socket, as systemd's manager would receive it; a hung main loop stops the pings."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
import uuid
from pathlib import Path

import httpx
import pytest

from agegate.edge.config import EX_CONFIG, Settings
from agegate.edge.events import Event, Stats, Status
from agegate.edge.notify import SEND_TIMEOUT_S, SystemdNotifier
from agegate.testing.net import free_port
from agegate.testing.daemon import DaemonProcess
from agegate.testing.mqtt import Subscriber

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "systemd" / "agegate-edge.service"
DEPLOY_DOC = ROOT / "docs" / "deploy.md"
INSTALLED_EXEC_START = "/opt/agegate/venv/bin/agegate-edge run"
MAX_EXPOSURE = 1.5  # deploy.md says 1.3; a drop-in or new feature may cost a little, not a sandbox rule


# --- the unit file --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if not found:
        pytest.skip("systemd-analyze not found (Debian/Ubuntu: apt-get install systemd)")
    return found


def unit_entries(text: str) -> list[tuple[str, str, str]]:
    """(section, key, value) for every assignment; keys may repeat, as systemd allows."""
    entries, section = [], ""
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = line.strip("[]")
        else:
            key, _, value = line.partition("=")
            entries.append((section, key.strip(), value.strip()))
    return entries


def unit_values(key: str) -> list[str]:
    return [v for _, k, v in unit_entries(UNIT.read_text()) if k == key]


def test_unit_passes_systemd_analyze_verify(systemd_analyze, tmp_path):
    # verify also checks that ExecStart's program exists, and /opt/agegate/venv exists on a
    # till, not here. So verify a copy whose only change is ExecStart pointing at this
    # environment's own agegate-edge script: the rest of the file is checked as shipped.
    script = Path(sys.executable).parent / "agegate-edge"
    assert script.is_file() and os.access(script, os.X_OK), f"{script}: install the project (pip install -e .)"
    text = UNIT.read_text()
    assert text.count(f"ExecStart={INSTALLED_EXEC_START}\n") == 1
    copy = tmp_path / UNIT.name
    copy.write_text(text.replace(f"ExecStart={INSTALLED_EXEC_START}", f"ExecStart={script} run"))
    result = subprocess.run([systemd_analyze, "verify", "--man=no", str(copy)], capture_output=True, text=True,
                            timeout=60)
    # verify exits 0 on unknown keys and unparsable values (it only warns), so any output fails too.
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), result.stdout + result.stderr


def exposure(systemd_analyze: str, unit: Path) -> tuple[float, str]:
    result = subprocess.run([systemd_analyze, "security", "--offline=true", "--no-pager", str(unit)],
                            capture_output=True, text=True, timeout=60)
    found = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", result.stdout)
    assert found, f"no overall exposure in systemd-analyze's output:\n{result.stdout}{result.stderr}"
    return float(found.group(1)), result.stdout


def test_unit_exposure_is_at_most_1_5(systemd_analyze):
    level, report = exposure(systemd_analyze, UNIT)
    assert level <= MAX_EXPOSURE, f"exposure {level} > {MAX_EXPOSURE}:\n{report}"


def test_unit_matches_the_daemon_and_the_docs():
    assert unit_values("ExecStart") == [INSTALLED_EXEC_START]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["agegate-edge"] == "agegate.edge.cli:main"
    assert unit_values("Type") == ["notify"] and unit_values("WatchdogSec")
    assert unit_values("RestartPreventExitStatus") == [str(EX_CONFIG)]
    # The credential's name is the setting's name: pydantic-settings reads it from $CREDENTIALS_DIRECTORY.
    credentials = dict(c.partition(":")[::2] for c in unit_values("LoadCredential"))
    assert set(credentials) == {"AGEGATE_MQTT_PASSWORD", "AGEGATE_HTTP_TOKEN"}  # the secrets, never the env file
    for name in credentials:
        assert name.removeprefix("AGEGATE_").lower() in Settings.model_fields and name.startswith("AGEGATE_")
    # Idle connections must not use up descriptors (the default soft limit is 1,024), nor uploads memory.
    assert int(unit_values("LimitNOFILE")[0]) >= 4096 and unit_values("MemoryMax")
    # StateDirectory=agegate is /var/lib/agegate, where the daemon keeps its outbox by default.
    assert unit_values("StateDirectory") == ["agegate"]
    assert Settings.model_fields["state_dir"].default == Path("/var/lib/agegate")
    doc = DEPLOY_DOC.read_text()
    for path in ("/opt/agegate/venv", *unit_values("EnvironmentFile"), *credentials.values()):
        assert path in doc, f"docs/deploy.md does not say where {path} comes from"


def test_deploy_doc_explains_every_stats_and_status_field():
    doc = DEPLOY_DOC.read_text()
    common = set(Event.model_fields)
    for model in (Stats, Status):
        for name in set(model.model_fields) - common - {"type"}:
            assert f"`{name}`" in doc, f"docs/deploy.md troubleshooting does not explain {model.__name__}.{name}"


# --- the notifier on its own ------------------------------------------------------------------------


class NotifyListener:
    """systemd's side of the protocol: a unix datagram socket that records what arrives, and when."""

    def __init__(self, address: str, on_message=None):
        self.address = address  # as NOTIFY_SOCKET spells it
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.sock.settimeout(0.1)
        self.on_message = on_message
        self.messages: list[tuple[float, dict[str, str]]] = []
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._receive, name="notify-listener", daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._closed:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().split("\n") if "=" in line)
            if self.on_message:
                self.on_message(fields)
            with self._cond:
                self.messages.append((time.monotonic(), fields))
                self._cond.notify_all()

    def times(self, key: str, value: str = "1", after: float = 0.0) -> list[float]:
        with self._cond:
            return [t for t, m in self.messages if m.get(key) == value and t > after]

    def wait_for(self, predicate, timeout: float, why: str):
        deadline = time.monotonic() + timeout
        with self._cond:
            while not (found := predicate()):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{why}; received: {[m for _, m in self.messages]}")
                self._cond.wait(min(left, 0.2))
        return found

    def close(self) -> None:
        self._closed = True
        self._thread.join(2)
        self.sock.close()


def notify_address(tmp_path: Path) -> str:
    """A socket path in tmp_path, or an abstract name where that path is too long for AF_UNIX."""
    path = tmp_path / "notify.sock"
    return str(path) if len(str(path)) < 100 else f"@agegate-test-{uuid.uuid4().hex}"


@pytest.fixture
def listener(tmp_path):
    lst = NotifyListener(notify_address(tmp_path))
    yield lst
    lst.close()


def test_outside_systemd_the_notifier_does_nothing():
    n = SystemdNotifier.from_env({})
    assert not n.enabled and n.watchdog_interval_s is None
    n.ready("up")
    n.status("x")
    n.watchdog()
    n.stopping()
    assert n.ping_if_due(time.monotonic()) is False


def test_messages_reach_an_abstract_socket():
    lst = NotifyListener(f"@agegate-test-{uuid.uuid4().hex}")
    try:
        n = SystemdNotifier.from_env({"NOTIFY_SOCKET": lst.address, "WATCHDOG_USEC": "3000000"})
        assert n.enabled and n.watchdog_interval_s == 1.5
        n.ready("model loaded\ncamera up")  # a newline would start a new field: flattened
        n.status("camera reconnecting")
        n.stopping("stopping: flushing 3 events")
        n.close()
        msgs = lst.wait_for(lambda: len(lst.messages) >= 3 and [m for _, m in lst.messages], 5, "three messages")
        assert msgs == [{"READY": "1", "STATUS": "model loaded camera up"}, {"STATUS": "camera reconnecting"},
                        {"STOPPING": "1", "STATUS": "stopping: flushing 3 events"}]
    finally:
        lst.close()


def test_watchdog_is_only_for_the_process_systemd_named(listener):
    env = {"NOTIFY_SOCKET": listener.address, "WATCHDOG_USEC": "2000000"}
    assert SystemdNotifier.from_env({**env, "WATCHDOG_PID": str(os.getpid())}).watchdog_interval_s == 1.0
    other = SystemdNotifier.from_env({**env, "WATCHDOG_PID": str(os.getpid() + 1)})
    assert other.enabled and other.watchdog_interval_s is None and not other.ping_if_due(time.monotonic())
    for bad in ("", "0", "soon"):
        assert SystemdNotifier.from_env({**env, "WATCHDOG_USEC": bad}).watchdog_interval_s is None


def test_ping_if_due_pings_once_per_interval(listener):
    n = SystemdNotifier.from_env({"NOTIFY_SOCKET": listener.address, "WATCHDOG_USEC": "2000000"})
    assert [n.ping_if_due(t) for t in (100.0, 100.4, 100.99, 101.0, 101.5, 102.2)] == [True, False, False, True, False, True]
    listener.wait_for(lambda: len(listener.times("WATCHDOG")) == 3, 5, "three pings")


def test_a_failed_send_never_raises_is_logged_once_and_retried(tmp_path, caplog):
    address = str(tmp_path / "later.sock")
    n = SystemdNotifier.from_env({"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "2000000"})
    with caplog.at_level("WARNING", logger="agegate.edge.notify"):
        n.ready("up")
        assert n.ping_if_due(50.0) is False
        n.status("still nobody listening")
    assert len(caplog.records) == 1 and "later.sock" in caplog.text
    # The failed ping did not count: once the socket is there, the very next call pings.
    lst = NotifyListener(address)
    try:
        assert n.ping_if_due(50.1) is True
        lst.wait_for(lambda: lst.times("WATCHDOG"), 5, "the retried ping")
    finally:
        lst.close()


def test_a_receiver_that_does_not_read_cannot_hang_the_sender(tmp_path):
    address = str(tmp_path / "full.sock")
    deaf = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    deaf.bind(address)  # never reads: its queue fills up (net.unix.max_dgram_qlen)
    try:
        n = SystemdNotifier(address)
        for _ in range(5000):
            started = time.monotonic()
            n.status("x" * 64)
            if time.monotonic() - started > SEND_TIMEOUT_S / 2:
                break
        else:
            pytest.skip("the receive queue never filled")
        elapsed = time.monotonic() - started
        assert elapsed < SEND_TIMEOUT_S + 1.0
    finally:
        deaf.close()


# --- the real daemon ----------------------------------------------------------------------------------

WATCHDOG_USEC = 4_000_000  # WatchdogSec=4s: pings every 2 s from a loop that turns once a second


def test_daemon_speaks_the_notify_protocol(tmp_path, listener, broker, face_video, constant_bundles):
    d = DaemonProcess(tmp_path, broker=broker, camera=face_video, model_dir=constant_bundles[40])
    d.env.update(NOTIFY_SOCKET=listener.address, WATCHDOG_USEC=str(WATCHDOG_USEC))
    answered_at_ready: list[int] = []

    def on_message(fields: dict[str, str]) -> None:
        if fields.get("READY") == "1":  # systemd starts dependants now: the POS API must answer already
            try:
                answered_at_ready.append(httpx.get(f"{d.url}/healthz", timeout=2).status_code)
            except httpx.HTTPError:
                answered_at_ready.append(0)

    listener.on_message = on_message
    sub = Subscriber(broker.host, broker.port, "agegate/store-7/till-3/status")
    try:
        d.start()
        (ready,) = listener.wait_for(lambda: listener.times("READY"), 30, "no READY=1")
        assert answered_at_ready == [200]
        pings = listener.wait_for(lambda: len(t := listener.times("WATCHDOG", after=ready)) >= 3 and t, 20,
                                  "fewer than 3 WATCHDOG=1 after READY=1")
        limit = WATCHDOG_USEC / 1e6  # systemd's verdict: no gap may reach WatchdogSec
        gaps = [b - a for a, b in zip([ready, *pings], pings)]
        assert max(gaps) < limit, f"gaps between READY and pings: {gaps}"
        with listener._cond:
            statuses = [m["STATUS"] for _, m in listener.messages if "STATUS" in m]
        assert statuses and all(statuses), "no STATUS= line"

        assert d.stop(signal.SIGTERM) == 0, d.log()
        listener.wait_for(lambda: listener.times("STOPPING"), 5, "no STOPPING=1 after SIGTERM")
        sub.wait_for(lambda m: [p for _, p in m if p.get("state") == "stopped"], 10)
    finally:
        d.stop()
        sub.close()


def test_a_hung_main_loop_stops_the_watchdog_pings(tmp_path, monkeypatch, listener, broker, face_video,
                                                   constant_bundles):
    """The main loop pings after its housekeeping, which takes the TransactionBook's lock: holding
    that lock hangs the loop as a real deadlock would, and the pings must stop until it is free."""
    from agegate.edge.daemon import Daemon

    monkeypatch.setenv("NOTIFY_SOCKET", listener.address)
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")  # pings every 1 s
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    settings = Settings(store_id="store-7", till_id="till-3", camera=str(face_video), model_dir=constant_bundles[40],
                        mqtt_host=broker.host, mqtt_port=broker.port, http_port=free_port(),
                        state_dir=tmp_path / "state", stats_interval_s=1.0)
    daemon = Daemon(settings)
    loop = threading.Thread(target=daemon.run, name="main-loop", daemon=True)
    try:
        daemon.start()
        loop.start()
        listener.wait_for(lambda: len(listener.times("WATCHDOG")) >= 2, 10,
                          "no WATCHDOG=1 from Daemon.run(): is SystemdNotifier.ping_if_due() called in its loop?")
        with daemon.book._lock:
            held = time.monotonic()
            time.sleep(3.5)  # more than 3 ping intervals
            # One ping may already be on its way when the lock is taken; none may follow it.
            late = listener.times("WATCHDOG", after=held + 0.5)
            released = time.monotonic()
        assert late == [], f"pings while the main loop was stuck: {[round(t - held, 2) for t in late]}"
        listener.wait_for(lambda: listener.times("WATCHDOG", after=released), 3, "pings did not resume")
    finally:
        daemon.request_stop()
        loop.join(10)
        daemon.stop()
    listener.wait_for(lambda: listener.times("STOPPING"), 5, "no STOPPING=1 from Daemon.stop()")
