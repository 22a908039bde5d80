"""``make demo``: the till daemon on its embedded defaults, with a simulated POS.

It writes a demo video of a real face (the public-domain astronaut photo that
scikit-image ships: NASA's Eileen Collins), starts a local MQTT broker when none is
configured (mosquitto if installed, else the pure-Python amqtt broker), runs
``agegate-edge run`` on that video, plays three sales through the POS API, and prints the
answers the till got and what an independent MQTT subscriber received. It ends with the
purchases-by-age-band table that ``agegate-backend`` built from the demo's own events: its
ingester subscribes to the same broker from the start and writes a SQLite file
(:data:`DEMO_BACKEND_DB`, kept after the demo so that ``agegate-backend serve`` can show it).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

FRAME_SIZE = (640, 480)
DEMO_BACKEND_DB = Path(tempfile.gettempdir()) / "agegate-demo-backend.sqlite3"
DEMO_SALES = [  # (transaction, [(POS message type, restricted, category)])
    ("T-1001", [("item", False, "bakery"), ("item", True, "wine"), ("id_checked", False, None)]),
    ("T-1002", [("item", True, "beer")]),
    ("T-1003", [("item", True, "vodka")]),  # scanned while nobody is in front of the camera
]
DEMO_OPERATOR = "login-1017"  # the cashier's till login as a POS would send it: an opaque token, never a name


# --- demo videos (also used by the tests) ----------------------------------------------------------


def face_frame(face_bgr: np.ndarray, shift: int = 0) -> np.ndarray:
    """A 640x480 scene with the photo in the middle (the customer zone), moved ``shift`` px sideways."""
    frame = np.full((FRAME_SIZE[1], FRAME_SIZE[0], 3), 90, np.uint8)
    # 400 px: the face is about 75 px wide, as a customer a metre from a till camera.
    face = cv2.resize(face_bgr, (400, 400))
    x0, y0 = 120 + shift, 40
    frame[y0 : y0 + 400, x0 : x0 + 400] = face
    return frame


def _writer(path: Path, fps: float) -> cv2.VideoWriter:
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, FRAME_SIZE)
    if not w.isOpened():
        raise RuntimeError(f"OpenCV cannot write {path}")
    return w


def write_face_video(path: Path, face_bgr: np.ndarray, frames: int = 60, fps: float = 15.0) -> Path:
    w = _writer(path, fps)
    for i in range(frames):
        w.write(face_frame(face_bgr, shift=(i % 10) - 5))
    w.release()
    return path


def write_empty_video(path: Path, frames: int = 60, fps: float = 15.0) -> Path:
    """A till with nobody at it: a grey scene with faint sensor noise."""
    w = _writer(path, fps)
    for frame in _empty_frames(frames):
        w.write(frame)
    w.release()
    return path


def _empty_frames(n: int):
    rng = np.random.default_rng(0)
    for _ in range(n):
        frame = np.full((FRAME_SIZE[1], FRAME_SIZE[0], 3), 90, np.uint8)
        frame += rng.integers(0, 8, frame.shape, dtype=np.uint8)
        yield frame


def write_demo_video(path: Path, face_bgr: np.ndarray, fps: float = 15.0) -> Path:
    """8 s of a customer at the till, then 8 s of nobody; the daemon loops it."""
    w = _writer(path, fps)
    for i in range(int(8 * fps)):
        w.write(face_frame(face_bgr, shift=(i % 10) - 5))
    for frame in _empty_frames(int(8 * fps)):
        w.write(frame)
    w.release()
    return path


def astronaut_bgr() -> np.ndarray:
    from skimage import data

    return cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)


# --- a local broker -----------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_listening(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"the demo broker did not listen on 127.0.0.1:{port}")


def start_local_broker(workdir: Path) -> tuple[int, str, Callable[[], None]]:
    """(port, description, stop) of a broker on 127.0.0.1: mosquitto if installed, else amqtt."""
    binary = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)
    return start_mosquitto(binary, workdir) if binary else start_amqtt()


def start_mosquitto(binary: str, workdir: Path) -> tuple[int, str, Callable[[], None]]:
    port = _free_port()
    conf = workdir / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_listening(port)

    def stop() -> None:
        proc.terminate()
        proc.wait(5)

    return port, f"mosquitto on 127.0.0.1:{port}", stop


def start_amqtt() -> tuple[int, str, Callable[[], None]]:
    """The pure-Python amqtt broker in a background thread, for machines without mosquitto."""
    from amqtt.broker import Broker

    port = _free_port()
    loop = asyncio.new_event_loop()
    config = {"listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
              "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}}}
    threading.Thread(target=loop.run_forever, name="demo-broker", daemon=True).start()

    async def make_and_start() -> Broker:
        broker = Broker(config)  # created inside the loop it will run on
        await broker.start()
        return broker

    broker = asyncio.run_coroutine_threadsafe(make_and_start(), loop).result(15)
    _wait_listening(port)

    def stop() -> None:
        asyncio.run_coroutine_threadsafe(broker.shutdown(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)

    return port, f"amqtt (pure Python) on 127.0.0.1:{port}", stop


# --- the demo ---------------------------------------------------------------------------------------------


def main() -> int:
    import httpx
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    workdir = Path(tempfile.mkdtemp(prefix="agegate-demo-"))
    video = write_demo_video(workdir / "customer.avi", astronaut_bgr())
    print(f"demo video with a real face: {video}")

    stop_broker = None
    if os.environ.get("AGEGATE_MQTT_HOST"):
        host, port = os.environ["AGEGATE_MQTT_HOST"], int(os.environ.get("AGEGATE_MQTT_PORT", "1883"))
        print(f"using the configured broker {host}:{port}")
    else:
        host = "127.0.0.1"
        port, described, stop_broker = start_local_broker(workdir)
        print(f"started a local broker: {described}")

    backend = _start_backend(host, port)

    received: list[tuple[str, dict]] = []
    sub = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"agegate-demo-backend-{os.getpid()}")
    sub.on_connect = lambda c, *a: c.subscribe("agegate/#", qos=1)
    sub.on_message = lambda c, u, m: received.append((m.topic, json.loads(m.payload)))
    sub.connect(host, port)
    sub.loop_start()

    http_port = _free_port()
    env = {**os.environ, "AGEGATE_CAMERA": str(video), "AGEGATE_MQTT_HOST": host, "AGEGATE_MQTT_PORT": str(port),
           "AGEGATE_HTTP_PORT": str(http_port), "AGEGATE_STATE_DIR": str(workdir / "state"),
           "AGEGATE_STATS_INTERVAL_S": "2", "AGEGATE_LOG_LEVEL": "ERROR"}
    daemon = subprocess.Popen([sys.executable, "-m", "agegate.edge.cli", "run"], env=env)
    url = f"http://127.0.0.1:{http_port}"
    try:
        _wait_ready(url, daemon)
        print(f"daemon ready on {url} (OpenAPI docs at {url}/docs)\n")
        for tx, steps in DEMO_SALES:
            if tx == "T-1003":
                print("(the customer steps away from the camera)")
                _wait_for(url, lambda s: s["customer"] is None)
            print(f"POS  transaction_start {tx}")
            httpx.post(f"{url}/v1/pos", json={"type": "transaction_start", "transaction_id": tx, "operator_id": DEMO_OPERATOR})
            for kind, restricted, category in steps:
                r = httpx.post(f"{url}/v1/pos", json={"type": kind, "transaction_id": tx, "category": category,
                                                      "restricted": restricted}, timeout=30).json()
                if kind == "item" and restricted:
                    est = r["estimate"]
                    seen = f"estimated age {est['age']:.1f} ± {est['spread']:.1f} over {est['samples']} frames" if est else "no estimate"
                    print(f"POS  item {category} (restricted) -> {r['decision']}: {r['message']} [{seen}]")
                elif kind == "id_checked":
                    print(f"POS  id_checked {tx}")
                else:
                    print(f"POS  item {category}")
            httpx.post(f"{url}/v1/pos", json={"type": "transaction_end", "transaction_id": tx})
            print(f"POS  transaction_end {tx}\n")
        time.sleep(2.5)  # long enough for one stats message
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(30)
        time.sleep(0.5)
        sub.disconnect()
        sub.loop_stop()
        if backend is not None:  # before the broker goes: what is on its way arrives first
            _stop_backend(backend, [tx for tx, _ in DEMO_SALES])
        if stop_broker:
            stop_broker()

    print("an independent MQTT subscriber received:")
    for topic, p in received:
        kind = topic.rsplit("/", 1)[-1]
        if kind == "alerts":
            print(f"  {topic}: {p['type']} for {p['transaction_id']} — {p['reason']}")
        elif kind == "transactions":
            print(f"  {topic}: {p['transaction_id']} age band {p['age_band']}, outcome {p['outcome']}")
        elif kind == "status":
            print(f"  {topic}: {p['state']}")
        elif kind == "stats":
            print(f"  {topic}: {p['processed_fps']} frames/s processed, detect {p['detect_ms']} ms, infer {p['infer_ms']} ms per face")
    if backend is not None:
        _print_backend_tables(backend)
    shutil.rmtree(workdir, ignore_errors=True)
    return 0 if daemon.returncode == 0 else 1


def _start_backend(host: str, port: int):
    """agegate-backend's ingester on the demo's broker, into a fresh DEMO_BACKEND_DB (None without the extra)."""
    try:
        from agegate.backend import db
        from agegate.backend.ingest import BrokerAddress, Ingester
    except ImportError as exc:  # `pip install agegate[edge]` only: the till runs, the backend part is skipped
        print(f"(agegate-backend is not installed: {exc}; `make demo` installs it)")
        return None
    for suffix in ("", "-wal", "-shm"):
        Path(f"{DEMO_BACKEND_DB}{suffix}").unlink(missing_ok=True)
    ingester = Ingester(db.connect(f"sqlite:///{DEMO_BACKEND_DB}"), [BrokerAddress(host, port)],
                        client_id=f"agegate-demo-ingest-{os.getpid()}")
    ingester.start()
    return ingester


def _stop_backend(ingester, transaction_ids: list[str], timeout: float = 15.0) -> None:
    from sqlalchemy import func, select

    from agegate.backend.db import transactions

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:  # the summaries are on their way through the broker
        with ingester.engine.connect() as conn:
            stored = conn.scalar(select(func.count()).select_from(transactions)
                                 .where(transactions.c.transaction_id.in_(transaction_ids)))
        if stored >= len(transaction_ids):
            break
        time.sleep(0.2)
    ingester.stop()


def _print_backend_tables(ingester) -> None:
    from datetime import datetime, timezone

    from agegate.backend import reports
    from agegate.backend.cli import format_table

    today = datetime.now(timezone.utc).date()
    with ingester.engine.connect() as conn:
        purchases = reports.purchases(conn, today, today)
        integrity = reports.integrity(conn, today, today)
    print(f"\nagegate-backend ingested the demo's events ({dict(ingester.counts)}) into {DEMO_BACKEND_DB}.")
    print("Purchases by age band and category, today:\n")
    print(format_table(*purchases))
    print("\nChallenge 25 prompts and unverified sales per till and cashier login, today:\n")
    print(format_table(*integrity))
    print(f"\nBrowse them: agegate-backend --db sqlite:///{DEMO_BACKEND_DB} serve   (then http://127.0.0.1:8090/reports)")


def _wait_for(url: str, condition, timeout: float = 30) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not condition(httpx.get(f"{url}/v1/status", timeout=2).json()):
        time.sleep(0.1)


def _wait_ready(url: str, daemon: subprocess.Popen, timeout: float = 90) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if daemon.poll() is not None:
            raise SystemExit(f"the daemon exited with {daemon.returncode}")
        try:
            if httpx.get(f"{url}/v1/status", timeout=1).json()["customer"]:
                return
        except (httpx.HTTPError, KeyError):
            pass
        time.sleep(0.3)
    raise SystemExit("the daemon did not see the customer within 90 s")


if __name__ == "__main__":
    sys.exit(main())
