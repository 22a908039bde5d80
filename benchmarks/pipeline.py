"""The real daemon's pipeline, and decision latency as the POS and the backend see it.

``agegate-edge run`` is started as its own process (as systemd starts it) on a 640x480
video of a real face (agegate.testing.videos' ``write_face_video``, played at the camera's rate),
against a real Mosquitto on a free loopback port. Then:

1. **Throughput**: for ``duration`` seconds with no POS traffic, the frames processed and
   ages estimated per second and the per-stage times come from the daemon's own stage
   timers (``GET /v1/status`` → ``stages``, totals since start-up, differenced); its CPU
   time and peak resident set (VmHWM) from ``/proc/<pid>``.
2. **Latency**: ``transactions`` sales, one after another with a short pause, each a
   restricted item posted with a real HTTP client (keep-alive, as a POS keeps its
   connection) while an independent paho subscriber listens on the alerts topic.
   (a) is from sending the request to having the answer; (b) from sending it to the
   alert arriving at the subscriber. The face has been seen before the first sale, and
   the challenge age is set to 99 so that every sale raises an alert (the decision path
   is the same as for a real under-25 customer). Each sale then ends with ``id_checked``
   and ``transaction_end``, outside the timing.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Callable

import httpx

from agegate.edge.capture import CAMERA_THREAD
from agegate.edge.vision import VISION_THREAD
from agegate.testing.brokers import start_local_broker
from agegate.testing.daemon import Address, DaemonProcess
from agegate.testing.mqtt import Subscriber
from agegate.testing.net import HOST
from agegate.testing.videos import astronaut_bgr, write_face_video

from .measure import cpu_seconds, minor_faults, proc_status_kb, summary_ms, thread_cpu_seconds

STAGES = ("capture", "detect", "crop", "infer", "decide", "publish")


# What the benchmark runs the daemon with: its own till, every sale an alert (see above), a rare stats event.
BENCH_SETTINGS = {"store_id": "bench", "till_id": "till-1", "challenge_age": 99, "stats_interval_s": 30, "log_level": "INFO"}


def bench_daemon(workdir: Path, *, video: Path, bundle: Path, broker_port: int, env: dict[str, str]) -> DaemonProcess:
    """The daemon under test (agegate.testing.daemon), ``env``: AGEGATE_* variables as given on the command line."""
    return DaemonProcess(workdir, broker=Address(HOST, broker_port), camera=video, model_dir=bundle,
                         defaults=BENCH_SETTINGS, env=env)


def start_bench_daemon(daemon: DaemonProcess) -> None:
    """Start it and wait until it serves, is connected to the broker and has seen the face."""
    daemon.start(wait_for_face=True, wait_streaming=False, wait_connected=True, timeout=90)


def _stage_ms(before: dict, after: dict) -> dict[str, dict]:
    out = {}
    for name in ("frames", *STAGES):
        if name not in after:
            continue
        n = after[name]["count"] - before.get(name, {}).get("count", 0)
        s = after[name]["total_s"] - before.get(name, {}).get("total_s", 0.0)
        out[name] = {"count": n, "ms": round(1000.0 * s / n, 3) if n else None}
    return out


def _by_thread(before: dict[str, float], after: dict[str, float], frames: int) -> dict[str, float] | None:
    """The daemon's CPU per processed frame by thread: the camera, the vision loop, and every
    other thread together (HTTP server, MQTT, housekeeping, the console's workers)."""
    if not frames:
        return None
    spent = {name: after[name] - before.get(name, 0.0) for name in after}
    camera, vision = spent.pop(CAMERA_THREAD, 0.0), spent.pop(VISION_THREAD, 0.0)
    return {"camera": round(1000 * camera / frames, 3), "vision": round(1000 * vision / frames, 3),
            "other": round(1000 * sum(spent.values()) / frames, 3)}


def run_pipeline(*, bundle: Path, duration: float, warmup: float, transactions: int, pause: float,
                 camera_fps: float, env: dict[str, str], workdir: Path | None = None,
                 bracket: Callable[[], dict] | None = None) -> dict:
    """Start broker and daemon, measure throughput and then latency; the figures as a dict.

    ``bracket``, when given, measures the isolated costs in this process right before and right
    after the throughput window (the daemon running meanwhile), so that the overhead ratio
    compares figures taken minutes apart at most, under the same background load."""
    workdir = Path(workdir or tempfile.mkdtemp(prefix="agegate-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    video = write_face_video(workdir / "customer.avi", astronaut_bgr(), frames=int(camera_fps * 5), fps=camera_fps)
    port, broker_described, stop_broker = start_local_broker(workdir)
    daemon = bench_daemon(workdir, video=video, bundle=bundle, broker_port=port, env=env)
    listener = None
    try:
        start_bench_daemon(daemon)
        pid = daemon.proc.pid
        status = daemon.status()
        time.sleep(warmup)

        # 1. throughput, no POS traffic
        bracketed = [bracket()] if bracket else []
        s0, c0, f0, t0 = daemon.status()["stages"], cpu_seconds(pid), minor_faults(pid), time.perf_counter()
        th0 = thread_cpu_seconds(pid)
        time.sleep(duration)
        th1 = thread_cpu_seconds(pid)
        status = daemon.status()
        s1, c1, f1, t1 = status["stages"], cpu_seconds(pid), minor_faults(pid), time.perf_counter()
        if bracket:
            bracketed.append(bracket())
        wall = t1 - t0
        stages = _stage_ms(s0, s1)
        frames = stages["frames"]["count"]
        faces = stages["infer"]["count"]
        cpu = c1 - c0
        throughput = {
            "seconds": round(wall, 2),
            "camera_fps": status["camera"]["fps"],
            "frames_per_s": round(frames / wall, 2),
            "estimates_per_s": round(faces / wall, 2),
            "faces_per_frame": round(faces / frames, 3) if frames else None,
            "stages": stages,
            "vision_ms_per_frame": stages["frames"]["ms"],
            "cpu_percent": round(100.0 * cpu / wall, 1),
            "cpu_ms_per_frame": round(1000.0 * cpu / frames, 3) if frames else None,
            "minor_faults_per_frame": round((f1 - f0) / frames, 1) if frames else None,
            "thread_cpu_ms_per_frame": _by_thread(th0, th1, frames),
            **({"isolated_bracket": bracketed} if bracketed else {}),
            "peak_rss_mb": round(proc_status_kb(pid, "VmHWM") / 1024, 1),
        }

        # 2. latency of decisions, the face already seen
        listener = Subscriber(HOST, port, "agegate/bench/till-1/alerts")
        answer_s, alert_s, decisions, missing = [], [], {}, 0
        s2, c2, t2 = daemon.status()["stages"], cpu_seconds(pid), time.perf_counter()
        with httpx.Client(base_url=daemon.url, timeout=30) as pos:
            for i in range(transactions):
                tx = f"B-{i:05d}"
                sent = time.perf_counter()
                r = pos.post("/v1/pos", json={"type": "item", "transaction_id": tx, "category": "wine",
                                              "restricted": True})
                answered = time.perf_counter()
                r.raise_for_status()
                decision = r.json()["decision"]
                decisions[decision] = decisions.get(decision, 0) + 1
                answer_s.append(answered - sent)
                if decision != "clear":
                    arrived = listener.arrival(tx, timeout=10)
                    if arrived is None:
                        missing += 1
                    else:
                        alert_s.append(arrived - sent)
                pos.post("/v1/pos", json={"type": "id_checked", "transaction_id": tx})
                pos.post("/v1/pos", json={"type": "transaction_end", "transaction_id": tx})
                time.sleep(pause)
        s3, c3, t3 = daemon.status()["stages"], cpu_seconds(pid), time.perf_counter()
        latency = {
            "transactions": transactions,
            "pause_s": pause,
            "decisions": decisions,
            "alerts_missing": missing,
            "http_answer_ms": summary_ms(answer_s),
            "alert_ms": summary_ms(alert_s),
            "stages": _stage_ms(s2, s3),
            "frames_per_s": round((s3["frames"]["count"] - s2["frames"]["count"]) / (t3 - t2), 2),
            "cpu_percent": round(100.0 * (c3 - c2) / (t3 - t2), 1),
        }
        model = status["model"]
        return {
            "bundle": str(bundle), "model": f"{model['name']} {model['version']} ({model['variant']})",
            "detector": status["detector"], "broker": broker_described, "video": f"640x480 at {camera_fps:g} fps (MJPG)",
            "settings": {k: v for k, v in daemon.env.items() if k.startswith("AGEGATE_") and k not in _PLUMBING},
            "throughput": throughput, "latency": latency, "peak_rss_mb": round(proc_status_kb(pid, "VmHWM") / 1024, 1),
        }
    except Exception as exc:
        raise RuntimeError(f"pipeline benchmark failed: {exc}\n--- daemon log ---\n{daemon.log_tail()}") from exc
    finally:
        if listener is not None:
            listener.close()
        daemon.stop(timeout=30)
        stop_broker()


_PLUMBING = {"AGEGATE_CAMERA", "AGEGATE_MODEL_DIR", "AGEGATE_MQTT_HOST", "AGEGATE_MQTT_PORT", "AGEGATE_HTTP_PORT",
             "AGEGATE_STATE_DIR", "AGEGATE_STORE_ID", "AGEGATE_TILL_ID"}
