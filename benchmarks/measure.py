"""Timing and process accounting shared by the benchmark's parts.

Wall time with ``time.perf_counter``; CPU time of this process (every thread) with
``time.process_time``, so a cost measured with two threads is not mistaken for half a
cost; another process's CPU time and peak memory from ``/proc/<pid>``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable

import numpy as np

TICKS = os.sysconf("SC_CLK_TCK")


def summary_ms(seconds: list[float] | np.ndarray) -> dict[str, float]:
    """n, mean, p50, p90, p99 and max of durations given in seconds, in milliseconds."""
    ms = np.asarray(seconds, dtype=np.float64) * 1000.0
    if ms.size == 0:
        return {"n": 0}
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return {"n": int(ms.size), "mean": round(float(ms.mean()), 3), "p50": round(float(p50), 3),
            "p90": round(float(p90), 3), "p99": round(float(p99), 3), "max": round(float(ms.max()), 3)}


def time_calls(fn: Callable[[], object], *, seconds: float, min_n: int, warmup: int = 3,
               max_n: int = 100_000, every_s: float = 0.0) -> dict[str, float]:
    """Call ``fn`` at least ``min_n`` times and for about ``seconds``, after ``warmup`` calls:
    the wall-time summary of one call, plus ``cpu_ms``, this process's CPU time per call.

    ``every_s`` paces the calls (one every so many seconds, idle in between), as the daemon
    paces detection: a CPU that idles between calls starts each one with colder caches."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    cpu0, start = time.process_time(), time.perf_counter()
    while len(times) < min_n or (time.perf_counter() - start < seconds and len(times) < max_n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
        if every_s:
            time.sleep(max(0.0, every_s - times[-1]))
    cpu = time.process_time() - cpu0
    return {**summary_ms(times), "cpu_ms": round(1000.0 * cpu / len(times), 3)}


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (all its threads)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime (fields 14 and 15 of stat)


def thread_cpu_seconds(pid: int) -> dict[str, float]:
    """CPU seconds so far per thread name of a process (/proc/<pid>/task/*/comm), threads of the
    same name added up."""
    out: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            stat = (task / "stat").read_text()
        except OSError:
            continue  # ended meanwhile
        fields = stat[stat.rindex(")") + 2 :].split()
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / TICKS
    return out


def minor_faults(pid: int) -> int:
    """Minor page faults a process has taken so far (all its threads): fresh pages mapped in."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2 :].split()[7])  # minflt, field 10 of stat


def proc_status_kb(pid: int, key: str) -> int:
    """A ``kB`` figure from /proc/<pid>/status, e.g. VmHWM (peak resident set) or VmRSS."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(f"{key} not in /proc/{pid}/status")


def busy_processes(sample_s: float = 1.0, min_percent: float = 10.0) -> list[dict]:
    """Other processes using at least ``min_percent`` of a core over ``sample_s``: the background load."""

    def snapshot() -> dict[int, float]:
        out = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and int(entry.name) != os.getpid():
                try:
                    out[int(entry.name)] = cpu_seconds(int(entry.name))
                except (OSError, ValueError, IndexError):
                    pass
        return out

    before = snapshot()
    time.sleep(sample_s)
    after = snapshot()
    busy = []
    for pid, cpu in after.items():
        percent = 100.0 * (cpu - before.get(pid, cpu)) / sample_s
        if percent >= min_percent:
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            except OSError:
                continue
            busy.append({"pid": pid, "cpu_percent": round(percent), "command": cmd[:160]})
    return sorted(busy, key=lambda p: -p["cpu_percent"])
