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


def _pct(v) -> str:
    return "–" if v is None else f"{100 * v:.1f} %"


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
        # "crop" (box or landmarks) is recorded since 2026-11-28; older runs render as they were.
        crop = any("crop" in x for x in r["models"])
        lines += _table(["model", "variant", "input", *(["crop"] if crop else []), "MB", "threads", "crop+resize ms",
                         "inference ms p50", "p90", "CPU ms", "n"],
                        [[f"{x['name']} {x['version']}", x["variant"], x["input"], *([x.get("crop", "box")] if crop else []),
                          round(x["file_bytes"] / 1e6, 2), x["threads"],
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
        th = t.get("thread_cpu_ms_per_frame")
        if th:
            lines += [f"Where the daemon's CPU goes, per processed frame: vision thread {th['vision']:.2f} ms (detect, "
                      f"crop, infer, tracking), camera thread {th['camera']:.2f} ms (reading every frame, decoding "
                      f"the analysed ones), every other thread {th['other']:.2f} ms (HTTP, MQTT, housekeeping); "
                      f"{t.get('minor_faults_per_frame')} minor page faults a frame.", ""]
    o = r.get("overhead")
    if o:
        lines += ["## Overhead ratio", ""]
        lines += _table(["measure", "pipeline ms per frame", "isolated detect + infer ms", "ratio", "target"],
                        [["CPU time, isolated costs of the tables above", o["cpu"]["pipeline_ms"], o["cpu"]["isolated_ms"],
                          _f(o["cpu"]["ratio"], 2), "≤ 1.15"],
                         ["vision loop wall time", o["wall"]["pipeline_ms"], o["wall"]["isolated_ms"],
                          _f(o["wall"]["ratio"], 2), ""]]
                        + ([["CPU time, isolated costs measured next to the pipeline's window",
                             o["cpu_bracketed"]["pipeline_ms"], o["cpu_bracketed"]["isolated_ms"],
                             _f(o["cpu_bracketed"]["ratio"], 2), "≤ 1.15"]] if o.get("cpu_bracketed") else [])
                        + ([[f"CPU time, detection alone paced at {o['cpu_paced']['fps']:g}/s", o["cpu_paced"]["pipeline_ms"],
                             o["cpu_paced"]["isolated_ms"], _f(o["cpu_paced"]["ratio"], 2), ""]] if o.get("cpu_paced") else []))
        lines += [o["explained"], ""]
    b = r.get("pipeline_before")
    if b and p:
        ob, t = r.get("overhead_before") or {}, p["throughput"]
        lines += ["## Before and after (the same run)", "",
                  f"*Before*: the same daemon with {' '.join(f'`{e}`' for e in b['before_env'])} (every frame "
                  "analysed, every face estimated, OpenCV on every core: its behaviour before these settings); "
                  "*after*: the defaults.", ""]
        lines += _table(["", "frames/s", "estimates/s", "capture ms", "detect ms", "infer ms", "CPU %",
                         "CPU ms per frame", "peak RSS MB", "overhead ratio (CPU)"],
                        [[name, x["throughput"]["frames_per_s"], x["throughput"]["estimates_per_s"],
                          x["throughput"]["stages"]["capture"]["ms"], x["throughput"]["stages"]["detect"]["ms"],
                          x["throughput"]["stages"]["infer"]["ms"], x["throughput"]["cpu_percent"],
                          x["throughput"]["cpu_ms_per_frame"], x["peak_rss_mb"],
                          _f((ov or {}).get("cpu", {}).get("ratio"), 2)]
                         for name, x, ov in (("before", b, ob), ("after", p, o))])
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
    c = r.get("contention")
    if c:
        lines += ["## POS latency under contention", ""]
        con, out = c["console"], c["outbox"]
        lines += _table(["while", "sales", "p50 ms", "p99 ms", "max ms", "target p99"],
                        [["the installer view streams and a photo is tried, back to back", con["http_answer_ms"]["n"],
                          con["http_answer_ms"].get("p50"), con["http_answer_ms"].get("p99"),
                          con["http_answer_ms"].get("max"), "≤ 50 ms"],
                         [f"the outbox drains {out['events_queued']} events after a broker outage",
                          out["http_answer_ms"]["n"], out["http_answer_ms"].get("p50"), out["http_answer_ms"].get("p99"),
                          out["http_answer_ms"].get("max"), "≤ 50 ms"]])
        lines += [f"Console: {con['live_per_s']} live frames and {con['photos_per_s']} photo estimates a second "
                  f"meanwhile. Outbox: {out['events_queued']} events queued by {out['sales_to_queue']} sales during "
                  f"the outage ({out['queue_fill_s']} s), drained in {_f(out['drain_s'])} s "
                  f"({_f(out['events_per_s'])} events/s) after the broker came back; {c['pause_s']} s between sales.", ""]
    st = r.get("startup")
    if st:
        lines += ["## Start-up", ""]
        lines += _table(["", "median s", "each run s"],
                        [["`agegate-edge run` → READY=1 (systemd notify)", st["ready_s_median"],
                          ", ".join(f"{v:.2f}" for v in st["ready_s"])],
                         ["`agegate-edge run` → first age estimate", st["first_estimate_s_median"],
                          ", ".join(f"{v:.2f}" for v in st["first_estimate_s"])]])
    ins = r.get("install")
    if ins:
        lines += ["## A fresh install", ""]
        lines += [f"`pip install '.[{ins['extra']}]'` into a fresh virtual environment (Python {ins['python']}): "
                  f"**{ins['venv_mb']:.0f} MB** on disk ({ins['packages']} packages, {ins['seconds']} s), of which "
                  f"{ins['installer_mb']:.0f} MB are the installer itself (pip, setuptools): "
                  f"{ins['without_installer_mb']:.0f} MB without it. TensorFlow or Keras installed: "
                  f"{'yes' if ins['tensorflow'] else 'no'}. Goal ≤ 350 MB.", ""]
        lines += _table(["largest parts", "MB"], [[k, v] for k, v in ins["largest_mb"].items()])
    peers = r.get("peers")
    if peers:
        lines += ["## Peers on the same test faces", ""]
        if peers.get("rows"):
            srcs = peers.get("sources", {})
            lines += [f"{peers['faces']} test faces ({', '.join(f'{k} {v}' for k, v in srcs.items())}); "
                      f"{peers['both_detected']} found by both detectors; MAE in years.", ""]
            rows = []
            for x in peers["rows"]:
                rows.append([x["pipeline"], f"{x['model']} ({x['variant']})", x["detector"], x["detected"], x["missed"],
                             x["photo_ms"], x["model_ms"].get("mean"), x["mae_both"], x["mae_own"]])
            k = peers.get("keras")
            if k:
                rows.append([k["pipeline"], k["model"], f"{k.get('detector', 'haar')} (ours)", k["faces"], "–", "–", k["model_ms"].get("mean"),
                             k["mae_both"], "–"])
            lines += _table(["pipeline", "model", "detector", "detected", "missed", "ms per photo (detect + estimate)",
                             "model ms per face", "MAE (both found)", "MAE (own detections)"], rows)
            if k:
                lines += [f"Naive Keras ({k['model']}) per 640×480 frame ({k.get('detector', 'haar')} + "
                          f"`model.predict`): {k['frame_ms']['mean']:.1f} ms, {k['frames_per_s']} frames/s; model load "
                          f"{k['load_s']} s; {k['faces']} faces estimated one `predict` call each.", ""]
            if any("sources" in x for x in peers["rows"]):
                lines += ["### Challenge 25 per source (estimate under 25 = asked for ID; on the faces both found)", ""]
                rows = []
                for x in peers["rows"]:
                    for name, f in [("all", x), *x.get("sources", {}).items()]:
                        ch = f["challenge"]
                        rows.append([x["pipeline"], name, f["faces"], f["missed"], f["mae_both"], f["mae_own"],
                                     f"{_pct(ch['under18_flagged'])} of {ch['under18_n']}",
                                     f"{_pct(ch['teen_flagged'])} of {ch['teen_n']}",
                                     f"{_pct(ch['over30_flagged'])} of {ch['over30_n']}"])
                lines += _table(["pipeline", "source", "faces", "detector missed", "MAE (both found)",
                                 "MAE (own detections)", "under-18s flagged", "13–17 flagged", "30+ flagged"], rows)
        lines += [f"- note: {n}" for n in peers.get("notes", [])] + [""]
    return "\n".join(lines)
