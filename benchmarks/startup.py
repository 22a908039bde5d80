"""Start-up and footprint: how long a till waits after a (re)start, and what an install weighs.

* **Start-up**: ``agegate-edge run`` started as systemd starts a ``Type=notify`` service, with
  ``NOTIFY_SOCKET`` naming a real unix datagram socket that this process reads: seconds from
  the start to the daemon's ``READY=1`` (it serves the POS), and to its first age estimate
  (``GET /v1/status`` → ``stages.infer.count`` above 0), on the face video and a real broker.
* **Footprint**: a fresh virtual environment in a temporary folder with ``pip install
  '.[edge]'`` from this checkout (what a till installs; pip takes wheels from its configured
  indexes and caches), its size on disk (``du``), its largest packages, and whether
  TensorFlow came with it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from agegate.testing.brokers import start_local_broker
from agegate.testing.videos import astronaut_bgr, write_face_video

from .pipeline import bench_daemon

ROOT = Path(__file__).resolve().parents[1]


def _du_mb(path: Path) -> float:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            p = os.path.join(dirpath, name)
            if not os.path.islink(p):
                total += os.lstat(p).st_blocks * 512  # on disk, as du counts
    return round(total / 1e6, 1)


def measure_startup(*, bundle: Path, runs: int, camera_fps: float, env: dict[str, str],
                    workdir: Path | None = None) -> dict:
    workdir = Path(workdir or tempfile.mkdtemp(prefix="agegate-bench-"))
    video = write_face_video(workdir / "customer.avi", astronaut_bgr(), frames=int(camera_fps * 5), fps=camera_fps)
    port, _described, stop_broker = start_local_broker(workdir)
    ready_s, estimate_s = [], []
    try:
        for k in range(runs):
            run_dir = workdir / f"start-{k}"
            run_dir.mkdir()
            sock_path = run_dir / "notify.sock"
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sock.bind(str(sock_path))
            daemon = bench_daemon(run_dir, video=video, bundle=bundle, broker_port=port,
                                  env={**env, "NOTIFY_SOCKET": str(sock_path)})
            try:
                started = time.perf_counter()
                daemon.launch()
                ready = first = None
                sock.settimeout(0.02)
                while (ready is None or first is None) and time.perf_counter() - started < 120:
                    if daemon.proc.poll() is not None:
                        raise RuntimeError(f"the daemon exited with {daemon.proc.returncode}:\n{daemon.log_tail()}")
                    try:
                        if ready is None and b"READY=1" in sock.recv(4096).split(b"\n"):
                            ready = time.perf_counter() - started
                    except (socket.timeout, BlockingIOError):
                        pass
                    if first is None and ready is not None:
                        try:
                            if daemon.status()["stages"]["infer"]["count"] > 0:
                                first = time.perf_counter() - started
                        except (httpx.HTTPError, KeyError, ValueError):
                            pass
                if ready is None or first is None:
                    raise RuntimeError(f"no READY or no estimate within 120 s:\n{daemon.log_tail()}")
                ready_s.append(ready)
                estimate_s.append(first)
            finally:
                daemon.stop(timeout=30)
                sock.close()
    finally:
        stop_broker()
    return {"runs": runs, "ready_s": [round(s, 2) for s in ready_s], "first_estimate_s": [round(s, 2) for s in estimate_s],
            "ready_s_median": round(sorted(ready_s)[len(ready_s) // 2], 2),
            "first_estimate_s_median": round(sorted(estimate_s)[len(estimate_s) // 2], 2)}


def measure_install(extra: str = "edge") -> dict:
    """A fresh venv with ``pip install '.[extra]'`` from this checkout: seconds, size, largest parts."""
    with tempfile.TemporaryDirectory(prefix="agegate-install-") as tmp:
        venv = Path(tmp) / "venv"
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        # A copy of the checkout without its own .venv and build outputs, so pip builds only the package.
        src = Path(tmp) / "src"
        shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".venv", ".git", "bench-results", "build",
                                                                 "*.egg-info", "__pycache__", "runs"))
        r = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", f".[{extra}]"], cwd=src,
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"pip install '.[{extra}]' failed:\n{r.stderr[-3000:]}")
        seconds = time.perf_counter() - started
        site = next((venv / "lib").glob("python*/site-packages"))
        parts: dict[str, float] = {}
        for entry in site.iterdir():
            name = entry.name.split("-")[0].split(".libs")[0].lower()  # a package, its .libs and its dist-info together
            parts[name] = parts.get(name, 0.0) + (_du_mb(entry) if entry.is_dir() else round(entry.lstat().st_size / 1e6, 3))
        freeze = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "list", "--format=freeze"],
                                capture_output=True, text=True).stdout.split()
        installer = sum(v for k, v in parts.items() if k in ("pip", "setuptools", "pkg_resources", "_distutils_hack"))
        total = _du_mb(venv)
        return {
            "extra": extra, "seconds": round(seconds, 1), "venv_mb": total,
            "installer_mb": round(installer, 1), "without_installer_mb": round(total - installer, 1),
            "largest_mb": {k: round(v, 1) for k, v in sorted(parts.items(), key=lambda kv: -kv[1])[:10]},
            "packages": len(freeze), "tensorflow": any(p.lower().startswith(("tensorflow", "keras")) for p in freeze),
            "python": f"{sys.version_info.major}.{sys.version_info.minor}",
        }
