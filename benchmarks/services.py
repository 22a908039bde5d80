"""Throwaway servers on loopback for the backend's tests and benchmark: PostgreSQL and Mosquitto.

Both are the real programs from Debian's packages (`make tools` installs them), started in a
temporary directory on a free port and removed afterwards.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_listening(port: int, proc: subprocess.Popen, what: str, log: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"{what} exited with {proc.returncode}: {log.read_text()[-2000:] if log.exists() else ''}")
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on 127.0.0.1:{port} within {timeout:g} s")


def postgres_bin() -> Path | None:
    """The directory of PostgreSQL's server programs (initdb, postgres), newest version first."""
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]), reverse=True)
    if versions:  # Debian's layout; its /usr/bin holds wrappers only
        return Path(versions[0]).parent
    found = shutil.which("initdb")
    return Path(found).resolve().parent if found and (Path(found).resolve().parent / "postgres").exists() else None


class ThrowawayPostgres:
    """A PostgreSQL cluster of its own: initdb in a temporary directory, trust auth, 127.0.0.1:port.

    PostgreSQL refuses to run as root; as root the cluster belongs to the ``postgres`` user that
    Debian's package creates, and its programs run through ``runuser``.
    """

    def __init__(self, durable: bool = False) -> None:
        self.durable = durable
        bindir = postgres_bin()
        if bindir is None:
            raise FileNotFoundError("PostgreSQL's initdb is not installed (`make tools` installs it: apt-get install postgresql)")
        self.bindir = bindir
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="agegate-pg-"))
        self.data = self.dir / "data"
        self.log = self.dir / "postgres.log"
        self._as: list[str] = []
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(self.dir, user.pw_uid, user.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]
        self.proc: subprocess.Popen | None = None

    def start(self) -> "ThrowawayPostgres":
        if not self.data.exists():
            subprocess.run([*self._as, str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust",
                            "--no-sync", "-E", "UTF8", "--locale=C"], check=True, capture_output=True)
        # Tests: fsync off, a throwaway cluster need not survive a power cut. The benchmark keeps
        # PostgreSQL's durable defaults (durable=True), to give the figure a chain would see.
        fast = [] if self.durable else ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
        self.proc = subprocess.Popen(
            [*self._as, str(self.bindir / "postgres"), "-D", str(self.data), "-p", str(self.port), "-h", "127.0.0.1",
             "-k", str(self.dir), *fast],
            stdout=subprocess.DEVNULL, stderr=open(self.log, "ab"))
        _wait_listening(self.port, self.proc, "postgres", self.log)
        import psycopg

        deadline = time.monotonic() + 30
        while True:  # listening comes before accepting connections ("the database system is starting up")
            try:
                psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres").close()
                return self
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"postgres is not ready: {self.log.read_text()[-2000:]}") from None
                time.sleep(0.1)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: smart shutdown
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class Mosquitto:
    """A real Mosquitto on 127.0.0.1:port with persistence, restartable; ``extra`` config lines (a bridge)."""

    def __init__(self, workdir: Path, extra: str = "", port: int | None = None):
        self.port = port or free_port()
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.conf = workdir / "mosquitto.conf"
        self.log = workdir / "mosquitto.log"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {workdir}/\n"
            f"log_dest file {self.log}\nmax_queued_messages 1000000\nmax_inflight_messages 100\n"
            + ("user root\n" if os.geteuid() == 0 else "") + extra)
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Mosquitto":
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.proc = subprocess.Popen([binary, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_listening(self.port, self.proc, "mosquitto", self.log)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: mosquitto writes its persistence file (sessions, queued messages) first
            self.proc.wait(30)
        self.proc = None
