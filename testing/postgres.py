"""A throwaway PostgreSQL on a free loopback port for the backend's tests and benchmark: the real
server from Debian's package (`make tools` installs it), in a temporary folder, removed afterwards."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from .net import free_port, wait_listening
from .processes import stop_process


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
        wait_listening(self.port, self.proc, "postgres", self.log)
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
        stop_process(self.proc)  # SIGTERM: smart shutdown
        self.proc = None

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
