"""POS latency under contention: what the till's answer costs while other work competes for it.

The real daemon (``agegate-edge run``, as in :mod:`benchmarks.pipeline`) on the face video,
against a real Mosquitto, in two situations:

1. **Console busy**: an installer view open (``GET /console/api/live`` one request at a time
   every 250 ms, as the page's script polls it: each answer JPEG-encodes the newest frame)
   while a photo is being tried over and over (``POST /console/api/photo``, back to back: the
   model and a detector of the console's own run on it) — and the POS sells.
2. **Outbox draining**: the broker is stopped, sales are rung up until the outbox holds
   ``backlog`` events (alerts and summaries, stored durably), the broker is started again on
   the same port, and the POS sells while the daemon hands the backlog to it, until the
   outbox is empty.

Each sale is a restricted item posted with a keep-alive HTTP client, timed from sending to
the answer, then ``transaction_end`` (not timed). The challenge age is 99, so every sale
raises an alert: the decision path of a real under-25 customer.
"""

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path

import cv2
import httpx

from agegate.testing.brokers import Mosquitto
from agegate.testing.videos import astronaut_bgr, write_face_video

from .measure import summary_ms
from .pipeline import bench_daemon, start_bench_daemon

LIVE_PERIOD_S = 0.25  # the installer page's poll (edge/console/static)


def _sell(pos: httpx.Client, tx: str) -> float:
    """One restricted item, timed (seconds to the answer); then the sale ends (not timed)."""
    sent = time.perf_counter()
    r = pos.post("/v1/pos", json={"type": "item", "transaction_id": tx, "category": "wine", "restricted": True})
    answered = time.perf_counter()
    r.raise_for_status()
    pos.post("/v1/pos", json={"type": "transaction_end", "transaction_id": tx}).raise_for_status()
    return answered - sent


def _console_load(url: str, photo_jpeg: bytes, stop: threading.Event, counts: dict) -> list[threading.Thread]:
    def live() -> None:
        with httpx.Client(base_url=url, timeout=30) as c:
            while not stop.is_set():
                r = c.get("/console/api/live")
                counts["live"] += r.status_code == 200 and r.json().get("frame") is not None
                stop.wait(LIVE_PERIOD_S)

    def photos() -> None:
        with httpx.Client(base_url=url, timeout=30) as c:
            while not stop.is_set():
                r = c.post("/console/api/photo", content=photo_jpeg, headers={"content-type": "image/jpeg"})
                counts["photo"] += r.status_code == 200 and bool(r.json().get("faces"))

    return [threading.Thread(target=live, daemon=True), threading.Thread(target=photos, daemon=True)]


def run_contention(*, bundle: Path, sales: int, backlog: int, pause: float, camera_fps: float,
                   env: dict[str, str], workdir: Path | None = None) -> dict:
    workdir = Path(workdir or tempfile.mkdtemp(prefix="agegate-bench-"))
    video = write_face_video(workdir / "customer.avi", astronaut_bgr(), frames=int(camera_fps * 5), fps=camera_fps)
    broker = Mosquitto(workdir).start()  # stopped and started again below: a broker outage
    daemon = bench_daemon(workdir, video=video, bundle=bundle, broker_port=broker.port, env=env)
    try:
        start_bench_daemon(daemon)
        out: dict = {"sales": sales, "pause_s": pause, "backlog": backlog}
        with httpx.Client(base_url=daemon.url, timeout=30) as pos:
            # 1. the console busy
            ok, jpeg = cv2.imencode(".jpg", astronaut_bgr(), [cv2.IMWRITE_JPEG_QUALITY, 90])
            stop, counts = threading.Event(), {"live": 0, "photo": 0}
            load = _console_load(daemon.url, jpeg.tobytes(), stop, counts)
            for t in load:
                t.start()
            time.sleep(1.0)
            started, answers = time.perf_counter(), []
            for i in range(sales):
                answers.append(_sell(pos, f"C-{i:05d}"))
                time.sleep(pause)
            seconds = time.perf_counter() - started
            stop.set()
            for t in load:
                t.join(30)
            out["console"] = {"http_answer_ms": summary_ms(answers), "seconds": round(seconds, 1),
                              "live_frames_served": counts["live"], "photos_estimated": counts["photo"],
                              "photos_per_s": round(counts["photo"] / seconds, 2),
                              "live_per_s": round(counts["live"] / seconds, 2)}

            # 2. a broker outage leaves a backlog; the outbox drains it while the POS sells
            broker.stop()
            deadline = time.monotonic() + 60
            while daemon.status()["mqtt"]["connected"] and time.monotonic() < deadline:
                time.sleep(0.1)
            fill_started, i = time.perf_counter(), 0
            while daemon.status()["outbox"]["pending"] < backlog:
                for _ in range(50):
                    _sell(pos, f"Q-{i:06d}")
                    i += 1
            pending = daemon.status()["outbox"]["pending"]
            fill_s = time.perf_counter() - fill_started
            broker.start()
            restarted, answers, drained_at, j = time.perf_counter(), [], None, 0
            while drained_at is None and time.perf_counter() - restarted < 600:  # sales while it drains
                answers.append(_sell(pos, f"D-{j:05d}"))
                j += 1
                time.sleep(pause)
                status = daemon.status()
                if status["mqtt"]["connected"] and status["outbox"]["pending"] == 0:
                    drained_at = time.perf_counter()
            out["outbox"] = {"http_answer_ms": summary_ms(answers), "events_queued": pending,
                             "sales_to_queue": i, "queue_fill_s": round(fill_s, 1),
                             "drain_s": round(drained_at - restarted, 1) if drained_at else None,
                             "events_per_s": round(pending / (drained_at - restarted), 1) if drained_at else None}
        return out
    except Exception as exc:
        raise RuntimeError(f"contention benchmark failed: {exc}\n--- daemon log ---\n{daemon.log_tail()}") from exc
    finally:
        daemon.stop(timeout=30)
        broker.stop()
