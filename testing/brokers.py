"""MQTT brokers on a free loopback port: the real Mosquitto (Debian's package; `make tools` installs
it), and the pure-Python amqtt for machines without it (``make demo`` only)."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Callable

from .net import HOST, free_port, wait_listening
from .processes import stop_process


def mosquitto_binary() -> str | None:
    return shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)


class Mosquitto:
    """A real Mosquitto process on 127.0.0.1:port; stop() and start() it again for a broker outage.

    ``persistent``: it keeps sessions and queued messages across its restarts, as a store's broker
    should. ``max_queued_messages``: per client while it is away (Mosquitto's default is 1000).
    ``extra``: more configuration lines (a bridge)."""

    def __init__(self, workdir: Path, port: int | None = None, *, persistent: bool = False,
                 max_queued_messages: int | None = None, extra: str = ""):
        self.host = HOST
        self.port = port or free_port()
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.conf = workdir / "mosquitto.conf"
        self.log = workdir / "mosquitto.log"
        self.conf.write_text(
            f"listener {self.port} {HOST}\nallow_anonymous true\n"
            + (f"persistence true\npersistence_location {workdir}/\n" if persistent else "persistence false\n")
            + f"log_dest file {self.log}\nmax_inflight_messages 100\n"
            + (f"max_queued_messages {max_queued_messages}\n" if max_queued_messages else "")
            + self.run_as
            + extra)
        self.proc: subprocess.Popen | None = None

    # Started as root, mosquitto switches to its own user, which cannot read private temporary folders.
    run_as = "user root\n" if os.geteuid() == 0 else ""

    def start(self) -> "Mosquitto":
        binary = mosquitto_binary()
        if binary is None:
            raise RuntimeError("mosquitto is missing; `make tools` installs it (apt-get install mosquitto)")
        self.proc = subprocess.Popen([binary, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_listening(self.port, self.proc, "mosquitto", self.log)
        return self

    def stop(self) -> None:
        stop_process(self.proc)  # SIGTERM: mosquitto writes its persistence file (sessions, queued messages) first
        self.proc = None


def start_amqtt() -> tuple[int, str, Callable[[], None]]:
    """(port, description, stop) of the pure-Python amqtt broker in a background thread."""
    from amqtt.broker import Broker

    port = free_port()
    loop = asyncio.new_event_loop()
    config = {"listeners": {"default": {"type": "tcp", "bind": f"{HOST}:{port}"}},
              "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}}}
    threading.Thread(target=loop.run_forever, name="amqtt-broker", daemon=True).start()

    async def make_and_start() -> Broker:
        broker = Broker(config)  # created inside the loop it will run on
        await broker.start()
        return broker

    broker = asyncio.run_coroutine_threadsafe(make_and_start(), loop).result(15)
    wait_listening(port, what="amqtt")

    def stop() -> None:
        asyncio.run_coroutine_threadsafe(broker.shutdown(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)

    return port, f"amqtt (pure Python) on {HOST}:{port}", stop


def start_local_broker(workdir: Path) -> tuple[int, str, Callable[[], None]]:
    """(port, description, stop) of a broker on 127.0.0.1: mosquitto if installed, else amqtt."""
    if mosquitto_binary() is None:
        return start_amqtt()
    broker = Mosquitto(workdir).start()
    return broker.port, f"mosquitto on {HOST}:{broker.port}", broker.stop
