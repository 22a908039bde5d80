"""The questions the backend answers, as SQL over the event tables (SQLite and PostgreSQL alike).

Each report returns ``(columns, rows)``: the web page renders it, the JSON API returns it as
records and ``/export/<name>.csv`` writes it, so the three can never disagree.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import date, datetime, timedelta

from sqlalchemy import and_, case, distinct, func, select
from sqlalchemy.engine import Connection

from agegate.edge.events import AGE_BAND_NAMES

from .db import alerts, statuses, transaction_items, transactions

# The alerts that ask the cashier for ID: Challenge 25 prompts (edge/decision.py's CHECK_DECISIONS).
PROMPTS = ("age_check_required", "no_face", "camera_unavailable", "cannot_assess")
UNCATEGORISED = "(no category)"

Report = tuple[list[str], list[list]]


def _range(column, start: date, end: date):
    """``start`` to ``end`` inclusive, in UTC days."""
    return and_(column >= datetime.combine(start, datetime.min.time()),
                column < datetime.combine(end + timedelta(days=1), datetime.min.time()))


def purchases(conn: Connection, start: date, end: date) -> Report:
    """Items bought per age band and POS category; share = the band's part of the category's items."""
    in_range = _range(transactions.c.ended_at, start, end)
    by_category = conn.execute(
        select(transactions.c.age_band, transaction_items.c.category,
               func.sum(transaction_items.c["items"]), func.sum(transaction_items.c.restricted_items))
        .join(transaction_items, transaction_items.c.event_id == transactions.c.event_id)
        .where(in_range).group_by(transactions.c.age_band, transaction_items.c.category)).all()
    # Items without a category (and every item of a version-1 summary) are in `items` only.
    totals = conn.execute(
        select(transactions.c.age_band, func.sum(transactions.c["items"]), func.sum(transactions.c.restricted_items))
        .where(in_range).group_by(transactions.c.age_band)).all()
    cells: dict[tuple[str, str], list[int]] = {}
    for band, category, items, restricted in by_category:
        cells[(band, category)] = [int(items), int(restricted)]
    for band, items, restricted in totals:
        known = [v for (b, _), v in cells.items() if b == band]
        rest = [int(items) - sum(v[0] for v in known), int(restricted) - sum(v[1] for v in known)]
        if rest[0] > 0:
            cells[(band, UNCATEGORISED)] = rest
    per_category: dict[str, int] = defaultdict(int)
    for (_, category), (items, _) in cells.items():
        per_category[category] += items
    order = {name: i for i, name in enumerate(AGE_BAND_NAMES)}
    rows = [[band, category, items, restricted, round(items / per_category[category], 4) if per_category[category] else 0.0]
            for (band, category), (items, restricted) in sorted(cells.items(), key=lambda kv: (kv[0][1], order.get(kv[0][0], 99)))]
    return ["age_band", "category", "items", "restricted_items", "share_of_category"], rows


def transactions_by_band(conn: Connection, start: date, end: date) -> Report:
    rows = conn.execute(
        select(transactions.c.age_band, func.count(), func.sum(transactions.c["items"]))
        .where(_range(transactions.c.ended_at, start, end)).group_by(transactions.c.age_band)).all()
    order = {name: i for i, name in enumerate(AGE_BAND_NAMES)}
    total = sum(n for _, n, _ in rows) or 1
    return (["age_band", "transactions", "items", "share_of_transactions"],
            [[band, n, int(items), round(n / total, 4)] for band, n, items in sorted(rows, key=lambda r: order.get(r[0], 99))])


def integrity(conn: Connection, start: date, end: date) -> Report:
    """Challenge 25 prompts, ID checks and unverified sales per store, till, operator and day, from the alerts
    (never dropped by a till's outbox, unlike summaries) and the summaries' ID checks."""
    day = func.date(alerts.c.timestamp)
    rows = conn.execute(
        select(day, alerts.c.store_id, alerts.c.till_id, alerts.c.operator_id,
               func.count(distinct(case((alerts.c.type.in_(PROMPTS), alerts.c.transaction_id)))),
               func.count(distinct(case((and_(alerts.c.type.in_(PROMPTS), alerts.c.likely_minor), alerts.c.transaction_id)))),
               func.sum(case((alerts.c.type == "unverified_sale", 1), else_=0)))
        .where(_range(alerts.c.timestamp, start, end))
        .group_by(day, alerts.c.store_id, alerts.c.till_id, alerts.c.operator_id)
        .order_by(day, alerts.c.store_id, alerts.c.till_id)).all()
    checked_day = func.date(transactions.c.ended_at)
    checked = {(str(r[0]), r[1], r[2], r[3]): int(r[4]) for r in conn.execute(
        select(checked_day, transactions.c.store_id, transactions.c.till_id, transactions.c.operator_id,
               func.count()).where(_range(transactions.c.ended_at, start, end), transactions.c.id_checked)
        .group_by(checked_day, transactions.c.store_id, transactions.c.till_id, transactions.c.operator_id))}
    out = []
    for d, store, till, operator, prompts, minors, unverified in rows:
        key = (str(d), store, till, operator)
        out.append([str(d), store, till, operator, int(prompts), int(minors), checked.get(key, 0), int(unverified or 0)])
    return ["day", "store_id", "till_id", "operator_id", "prompts", "likely_minor_prompts", "id_checked", "unverified_sales"], out


def tills(conn: Connection) -> Report:
    """Each till's last status: online, offline (its last will) or stopped, and what it runs.

    Last by arrival, not by ``timestamp``: a last will is stamped when the till connected."""
    latest = (select(statuses.c.store_id, statuses.c.till_id, func.max(statuses.c.received_at).label("at"))
              .group_by(statuses.c.store_id, statuses.c.till_id).subquery())
    rows = conn.execute(
        select(statuses.c.store_id, statuses.c.till_id, statuses.c.state, statuses.c.camera_state, statuses.c.version,
               statuses.c.model_name, statuses.c.model_version, statuses.c.received_at, statuses.c.last_model_rejection)
        .join(latest, and_(statuses.c.store_id == latest.c.store_id, statuses.c.till_id == latest.c.till_id,
                           statuses.c.received_at == latest.c.at))
        .order_by(statuses.c.store_id, statuses.c.till_id)).all()
    seen, out = set(), []
    for r in rows:  # two statuses with the same timestamp: keep one
        if (r[0], r[1]) not in seen:
            seen.add((r[0], r[1]))
            out.append([r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7].isoformat(sep=" ", timespec="seconds") + "Z", r[8]])
    return ["store_id", "till_id", "state", "camera_state", "software", "model", "model_version", "received", "last_model_rejection"], out


def rejected_payloads(conn: Connection) -> Report:
    from .db import rejected

    rows = conn.execute(select(rejected.c.first_seen, rejected.c.last_seen, rejected.c.times, rejected.c.broker,
                               rejected.c.topic, rejected.c.reason, rejected.c.payload)
                        .order_by(rejected.c.last_seen.desc()).limit(1000)).all()
    return (["first_seen", "last_seen", "times", "broker", "topic", "reason", "payload"],
            [[r[0].isoformat(sep=" ", timespec="seconds") + "Z", r[1].isoformat(sep=" ", timespec="seconds") + "Z", r[2], r[3],
              r[4], r[5], bytes(r[6][:500]).decode("utf-8", "replace")] for r in rows])


def counts(conn: Connection) -> dict[str, int]:
    from .db import rejected

    return {"transactions": conn.scalar(select(func.count()).select_from(transactions)),
            "alerts": conn.scalar(select(func.count()).select_from(alerts)),
            "statuses": conn.scalar(select(func.count()).select_from(statuses)),
            "rejected": conn.scalar(select(func.coalesce(func.sum(rejected.c.times), 0))),
            "rejected_distinct": conn.scalar(select(func.count()).select_from(rejected))}
