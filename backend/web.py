"""``agegate-backend serve``: the reports as a server-rendered page, a JSON API and CSV files.

The page uses the till console's stylesheet (edge/console/static/console.css, read as a file:
the till's server code is not imported) so that both look like one product. Plots are SVG
drawn here: no JavaScript, no plotting library on the server.
"""

from __future__ import annotations

import csv
import io
from datetime import date, datetime, timedelta, timezone
from html import escape
from pathlib import Path

from fastapi import FastAPI, HTTPException, Query
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse
from fastapi.templating import Jinja2Templates
from markupsafe import Markup
from sqlalchemy.engine import Engine
from starlette.requests import Request

import agegate.edge.events as _events
from agegate import __version__
from agegate.edge.events import AGE_BAND_NAMES
from agegate.edge.http_token import RequireToken

from . import reports

TEMPLATES = Jinja2Templates(directory=str(Path(__file__).resolve().parent / "templates"))
CONSOLE_CSS = Path(_events.__file__).resolve().parent / "console" / "static" / "console.css"
# One colour per age band, young to old (colour-blind-safe, Okabe-Ito), grey for unknown.
BAND_COLOURS = dict(zip(AGE_BAND_NAMES, ["#d55e00", "#e69f00", "#f0e442", "#009e73", "#56b4e9", "#0072b2", "#cc79a7", "#999999"]))
DATED = ("purchases", "bands", "integrity")
REPORTS = (*DATED, "tills", "rejected")


def _range(start: date | None, end: date | None) -> tuple[date, date]:
    end = end or datetime.now(timezone.utc).date()
    start = start or end - timedelta(days=6)
    if start > end:
        raise HTTPException(422, f"from ({start}) is after to ({end})")
    return start, end


def _report(engine: Engine, name: str, start: date, end: date) -> reports.Report:
    with engine.connect() as conn:
        if name == "purchases":
            return reports.purchases(conn, start, end)
        if name == "bands":
            return reports.transactions_by_band(conn, start, end)
        if name == "integrity":
            return reports.integrity(conn, start, end)
        if name == "tills":
            return reports.tills(conn)
        if name == "rejected":
            return reports.rejected_payloads(conn)
    raise HTTPException(404, f"no report {name!r}; there are {', '.join(REPORTS)}")


def purchases_plot(columns: list[str], rows: list[list]) -> Markup:
    """One bar per category, split by the age bands' shares of its items."""
    if not rows:
        return Markup("")
    categories = sorted({r[1] for r in rows})
    bar_h, label_w, width = 26, 150, 640
    height = 30 + bar_h * len(categories) + 40
    out = [f'<svg role="img" aria-labelledby="purchases-plot-title" viewBox="0 0 {label_w + width + 20} {height}" '
           f'width="{label_w + width + 20}" height="{height}" '
           f'class="plot" xmlns="http://www.w3.org/2000/svg"><title id="purchases-plot-title">Share of each category\'s '
           f'items bought per age band</title>']
    for i, category in enumerate(categories):
        y, x = 20 + i * bar_h, label_w
        out.append(f'<text x="{label_w - 8}" y="{y + 16}" text-anchor="end" font-size="13">{escape(category)}</text>')
        for band in AGE_BAND_NAMES:
            share = next((r[4] for r in rows if r[1] == category and r[0] == band), 0.0)
            if share:
                w = share * width
                out.append(f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{bar_h - 6}" fill="{BAND_COLOURS[band]}">'
                           f'<title>{escape(category)}, {band}: {share:.1%}</title></rect>')
                x += w
    y = 30 + bar_h * len(categories)
    for j, band in enumerate(AGE_BAND_NAMES):
        out.append(f'<rect x="{label_w + j * 80}" y="{y}" width="12" height="12" fill="{BAND_COLOURS[band]}"/>'
                   f'<text x="{label_w + j * 80 + 16}" y="{y + 11}" font-size="12">{band}</text>')
    out.append("</svg>")
    return Markup("".join(out))


def integrity_plot(columns: list[str], rows: list[list]) -> Markup:
    """Per day: Challenge 25 prompts and unverified sales, all stores, tills and operators in the table."""
    if not rows:
        return Markup("")
    days: dict[str, list[int]] = {}
    for r in rows:
        d = days.setdefault(r[0], [0, 0])
        d[0] += r[4]
        d[1] += r[7]
    top = max(max(v) for v in days.values()) or 1
    plot_h, group_w, left = 160, 56, 40
    width = max(left + group_w * len(days) + 20, 320)  # room for the legend however few the days
    out = [f'<svg role="img" aria-labelledby="integrity-plot-title" viewBox="0 0 {width} {plot_h + 70}" class="plot" '
           f'width="{width}" height="{plot_h + 70}" '
           f'xmlns="http://www.w3.org/2000/svg"><title id="integrity-plot-title">Challenge 25 prompts and unverified '
           f'sales per day</title>',
           f'<line x1="{left}" y1="{plot_h + 10}" x2="{width - 10}" y2="{plot_h + 10}" stroke="#5b6472"/>',
           f'<text x="{left - 6}" y="{14}" text-anchor="end" font-size="11">{top}</text>']
    for i, (day, (prompts, unverified)) in enumerate(sorted(days.items())):
        x = left + i * group_w + 6
        for j, (value, colour, what) in enumerate([(prompts, "#0072b2", "prompts"), (unverified, "#d55e00", "unverified sales")]):
            h = plot_h * value / top
            out.append(f'<rect x="{x + j * 22}" y="{plot_h + 10 - h:.1f}" width="20" height="{h:.1f}" fill="{colour}">'
                       f'<title>{day}: {value} {what}</title></rect>')
        out.append(f'<text x="{x + 21}" y="{plot_h + 26}" text-anchor="middle" font-size="11">{day[5:]}</text>')
    out.append(f'<rect x="{left}" y="{plot_h + 40}" width="12" height="12" fill="#0072b2"/><text x="{left + 16}" '
               f'y="{plot_h + 51}" font-size="12">prompts</text><rect x="{left + 90}" y="{plot_h + 40}" width="12" '
               f'height="12" fill="#d55e00"/><text x="{left + 106}" y="{plot_h + 51}" font-size="12">unverified sales</text></svg>')
    return Markup("".join(out))


def create_app(engine: Engine, token: str | None = None) -> FastAPI:
    app = FastAPI(title="agegate-backend", version=__version__,
                  description="Purchases by age band and Challenge 25 integrity from the tills' anonymous events")
    if token:
        app.add_middleware(RequireToken, token=token, open_paths=("/healthz",), page_prefix="/reports",
                           server="this agegate-backend")

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict:
        return {"ok": True}

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse("/reports", status_code=303)

    @app.get("/static/console.css", include_in_schema=False)
    def stylesheet() -> FileResponse:
        return FileResponse(CONSOLE_CSS, media_type="text/css")

    @app.get("/reports", response_class=HTMLResponse)
    def page(request: Request, start: date | None = Query(None, alias="from"), end: date | None = Query(None, alias="to")):
        start, end = _range(start, end)
        data = {name: _report(engine, name, start, end) for name in REPORTS}
        with engine.connect() as conn:
            totals = reports.counts(conn)
        return TEMPLATES.TemplateResponse(request, "reports.html", {
            "start": start, "end": end, "data": data, "totals": totals, "version": __version__,
            "purchases_plot": purchases_plot(*data["purchases"]), "integrity_plot": integrity_plot(*data["integrity"])})

    @app.get("/api/{name}")
    def api(name: str, start: date | None = Query(None, alias="from"), end: date | None = Query(None, alias="to")) -> JSONResponse:
        """A report as records: purchases, bands, integrity (over from..to, UTC days, default the last 7), tills, rejected."""
        start, end = _range(start, end)
        columns, rows = _report(engine, name, start, end)
        body = {"report": name, "rows": [dict(zip(columns, r)) for r in rows]}
        if name in DATED:
            body.update({"from": start.isoformat(), "to": end.isoformat()})
        return JSONResponse(body)

    @app.get("/export/{name}.csv", response_class=PlainTextResponse)
    def export(name: str, start: date | None = Query(None, alias="from"), end: date | None = Query(None, alias="to")):
        start, end = _range(start, end)
        columns, rows = _report(engine, name, start, end)
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(columns)
        writer.writerows(rows)
        suffix = f"-{start}-{end}" if name in DATED else ""
        return PlainTextResponse(buffer.getvalue(), media_type="text/csv",
                                 headers={"Content-Disposition": f'attachment; filename="agegate-{name}{suffix}.csv"'})

    return app
