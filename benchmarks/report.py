"""The benchmark's JSON as markdown tables (``python -m benchmarks --render bench.json``)."""

from __future__ import annotations


def _f(v, digits: int = 1) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _table(head: list[str], rows: list[list]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(_f(c) if not isinstance(c, str) else c for c in row) + " |" for row in rows]
    return out + [""]


def render(r: dict) -> str:
    m = r["machine"]
    lines = [f"# agegate benchmark — {r['started_at']}", ""]
    lines += [f"- machine: {m['cpu']}, {m['cores']} cores ({m['cores_usable']} usable), {m['memory_gib']} GiB RAM, "
              f"{m['os']} (Linux {m['kernel']}), Python {m['python']}",
              "- packages: " + ", ".join(f"{k} {v}" for k, v in m["packages"].items()) + (f"; {m['mosquitto']}" if m.get("mosquitto") else ""),
              f"- command: `{r['command']}`",
              f"- load average at start {r['load']['start']}, at end {r['load']['end']}"]
    for when in ("start", "end"):
        if f"busy_at_{when}" not in r["load"]:
            continue
        busy = r["load"][f"busy_at_{when}"]
        lines += [f"- **background load at the {when}**: " + "; ".join(f"{b['cpu_percent']} % `{b['command'][:80]}`"
                                                                    for b in busy)
                  if busy else f"- no other process used 10 % of a core at the {when}"]
    lines += [f"- note: {n}" for n in r.get("notes", [])] + [""]

    if r.get("detectors"):
        lines += ["## Face detection per 640×480 frame (isolated)", ""]
        lines += _table(["detector", "OpenCV threads", "calls", "ms p50", "ms p90", "CPU ms", "faces", "n"],
                        [[d["detector"], d["threads"], f"{d['paced_fps']:g} a second" if d.get("paced_fps") else
                          "back to back", d["ms"]["p50"], d["ms"]["p90"], d["ms"]["cpu_ms"], d["faces"], d["ms"]["n"]]
                         for d in r["detectors"]])
    if r.get("models"):
        lines += ["## Age model per face (isolated)", ""]
        lines += _table(["model", "variant", "input", "MB", "threads", "crop+resize ms", "inference ms p50",
                         "p90", "CPU ms", "n"],
                        [[f"{x['name']} {x['version']}", x["variant"], x["input"], round(x["file_bytes"] / 1e6, 2), x["threads"],
                          x["crop_ms"]["p50"], x["infer_ms"]["p50"], x["infer_ms"]["p90"], x["infer_ms"]["cpu_ms"],
                          x["infer_ms"]["n"]] for x in r["models"]])
    p = r.get("pipeline")
    if p:
        t, lat = p["throughput"], p["latency"]
        st = t["stages"]
        lines += ["## The daemon's pipeline", "",
                  f"{p['model']}, detector {p['detector']}, video {p['video']}, broker {p['broker']}; "
                  f"settings: {', '.join(f'{k}={v}' for k, v in p['settings'].items())}", ""]
        lines += _table(["camera fps", "frames/s processed", "estimates/s", "capture ms", "detect ms",
                         "crop+preprocess ms", "infer ms", "decide ms", "publish ms", "vision loop ms/frame",
                         "CPU %", "peak RSS MB"],
                        [[t["camera_fps"], t["frames_per_s"], t["estimates_per_s"], st["capture"]["ms"],
                          st["detect"]["ms"], st["crop"]["ms"], st["infer"]["ms"], lat["stages"]["decide"]["ms"],
                          lat["stages"]["publish"]["ms"], t["vision_ms_per_frame"], t["cpu_percent"], p["peak_rss_mb"]]])
        lines += ["CPU % is of one core (200 % = two cores busy). Decide and publish are from the latency run; "
                  "the rest from the run without POS traffic.", ""]
    o = r.get("overhead")
    if o:
        lines += ["## Overhead ratio", ""]
        lines += _table(["measure", "pipeline ms per frame", "isolated detect + infer ms", "ratio", "target"],
                        [["CPU time (headline)", o["cpu"]["pipeline_ms"], o["cpu"]["isolated_ms"], _f(o["cpu"]["ratio"], 2),
                          "≤ 1.15"],
                         ["vision loop wall time", o["wall"]["pipeline_ms"], o["wall"]["isolated_ms"],
                          _f(o["wall"]["ratio"], 2), ""]]
                        + ([[f"CPU time, detection alone paced at {o['cpu_paced']['fps']:g}/s", o["cpu_paced"]["pipeline_ms"],
                             o["cpu_paced"]["isolated_ms"], _f(o["cpu_paced"]["ratio"], 2), ""]] if o.get("cpu_paced") else []))
        lines += [o["explained"], ""]
    if p:
        lat = p["latency"]
        a, b = lat["http_answer_ms"], lat["alert_ms"]
        lines += ["## Decision latency (face already seen)", ""]
        lines += _table(["", "n", "p50 ms", "p99 ms", "max ms", "target p99"],
                        [["(a) POS request → HTTP answer", a["n"], a.get("p50"), a.get("p99"), a.get("max"), "≤ 50 ms"],
                         ["(b) POS request → alert at an MQTT subscriber", b["n"], b.get("p50"), b.get("p99"), b.get("max"), "≤ 100 ms"]])
        lines += [f"Decisions: {lat['decisions']}; alerts missing: {lat['alerts_missing']}; "
                  f"{lat['frames_per_s']} frames/s and {lat['cpu_percent']} % CPU meanwhile; "
                  f"{lat['pause_s']} s between sales.", ""]
    peers = r.get("peers")
    if peers:
        lines += ["## Peers on the same test faces", ""]
        if peers.get("rows"):
            lines += [f"{peers['faces']} test faces ({peers['data']}); {peers['both_detected']} found by both "
                      f"detectors; MAE in years.", ""]
            rows = []
            for x in peers["rows"]:
                rows.append([x["pipeline"], f"{x['model']} ({x['variant']})", x["detector"], x["detected"], x["missed"],
                             x["photo_ms"], x["model_ms"].get("mean"), x["mae_both"], x["mae_own"]])
            k = peers.get("keras")
            if k:
                rows.append([k["pipeline"], k["model"], "haar (ours)", k["faces"], "–", "–", k["model_ms"].get("mean"),
                             k["mae_both"], "–"])
            lines += _table(["pipeline", "model", "detector", "detected", "missed", "ms per photo (detect + estimate)",
                             "model ms per face", "MAE (both found)", "MAE (own detections)"], rows)
            if k:
                lines += [f"Naive Keras per 640×480 frame (Haar + `model.predict`): {k['frame_ms']['mean']:.1f} ms, "
                          f"{k['frames_per_s']} frames/s; model load {k['load_s']} s.", ""]
        lines += [f"- note: {n}" for n in peers.get("notes", [])] + [""]
    return "\n".join(lines)
