"""The console's decision log on a real SQLite file: numbers only, filters, pages, CSV rows,
pruning after AGEGATE_HISTORY_DAYS, WAL for a reader beside the writer, and a state
directory that cannot hold it."""

from __future__ import annotations

import logging
import sqlite3
import time
from datetime import date, datetime, timedelta

import pytest

from agegate.edge.events import Estimate, ModelRef, PosAnswer, Thresholds
from agegate.edge.history import COLUMNS, DecisionLog, HistoryError, Query, open_history

DAY = 86400.0


def at(day: date, hour: int = 12) -> float:
    """Unix time of ``hour`` o'clock local time on ``day``."""
    return datetime(day.year, day.month, day.day, hour).astimezone().timestamp()


@pytest.fixture
def log_(tmp_path):
    h = DecisionLog(tmp_path / "state", keep_days=30)
    yield h
    h.close()


def test_pages_newest_first_with_the_total(log_):
    for i in range(7):
        log_.record(transaction_id=f"T{i}", decision="clear", age=30.0 + i, spread=1.0, samples=10)
    rows, total = log_.page(limit=3)
    assert total == 7 and [r.transaction_id for r in rows] == ["T6", "T5", "T4"]
    rows, _ = log_.page(limit=3, offset=6)
    assert [r.transaction_id for r in rows] == ["T0"]
    assert rows[0].age == 30.0 and rows[0].samples == 10 and rows[0].likely_minor is False


def test_filters_by_local_day_and_decision(log_):
    today = date.today()
    week_ago = today - timedelta(days=7)
    log_.record(transaction_id="OLD", decision="no_face", ts=at(week_ago))
    log_.record(transaction_id="LATE", decision="clear", age=40.0, ts=at(today - timedelta(days=1), 23))
    log_.record(transaction_id="NOW", decision="age_check_required", age=16.0, likely_minor=True, ts=at(today, 0))

    def ids(q: Query) -> list[str]:
        return [r.transaction_id for r in log_.page(q)[0]]

    assert ids(Query()) == ["NOW", "LATE", "OLD"]
    assert ids(Query(since=today)) == ["NOW"]  # from local midnight
    assert ids(Query(until=today - timedelta(days=1))) == ["LATE", "OLD"]  # the whole of that day
    assert ids(Query(since=week_ago, until=week_ago)) == ["OLD"]
    assert ids(Query(decision="age_check_required")) == ["NOW"]
    assert ids(Query(since=today, decision="clear")) == []


def test_rows_stream_every_match_oldest_first_in_batches(log_):
    for i in range(10):
        log_.record(transaction_id=f"T{i}", decision="clear" if i % 2 else "no_face")
    assert [r.transaction_id for r in log_.rows(batch=3)] == [f"T{i}" for i in range(10)]
    assert [r.transaction_id for r in log_.rows(Query(decision="no_face"), batch=2)] == ["T0", "T2", "T4", "T6", "T8"]


def test_csv_fields_are_numbers_and_names_only(log_):
    log_.record(transaction_id="T1", decision="age_check_required", age=16.25, spread=0.5, samples=12,
                likely_minor=True, model_name="agegate-age", model_version="2026.11.22")
    log_.record(transaction_id="T2", decision="no_face")
    first, second = log_.rows()
    assert len(COLUMNS) == len(first.csv_fields())
    assert first.csv_fields()[1:] == ["T1", "age_check_required", "16.25", "0.5", "12", "1", "agegate-age", "2026.11.22"]
    assert second.csv_fields()[1:] == ["T2", "no_face", "", "", "", "0", "", ""]
    assert datetime.fromisoformat(first.csv_fields()[0]).tzinfo is not None  # local time with its offset


def test_records_what_a_pos_answer_carries(log_):
    answer = PosAnswer(transaction_id="P1", decision="age_check_required", check_id=True, likely_minor=True,
                       estimate=Estimate(age=16.0, spread=1.2, samples=9),
                       thresholds=Thresholds(challenge_age=25, legal_age=18),
                       model=ModelRef(name="agegate-age", version="v3", sha256="0" * 64))
    log_.record_answer(answer)
    log_.record_answer(PosAnswer(transaction_id="P2", decision="camera_unavailable", check_id=True,
                                 thresholds=Thresholds(challenge_age=25, legal_age=18)))
    new, old = log_.page()[0]
    assert (old.transaction_id, old.decision, old.age, old.spread, old.samples, old.likely_minor) == \
        ("P1", "age_check_required", 16.0, 1.2, 9, True)
    assert (old.model_name, old.model_version) == ("agegate-age", "v3")
    assert (new.decision, new.age, new.model_name) == ("camera_unavailable", None, None)


def test_old_rows_are_pruned_at_open_and_by_prune(tmp_path):
    state = tmp_path / "state"
    h = DecisionLog(state, keep_days=30)
    now = time.time()
    h.record(transaction_id="GONE", decision="clear", ts=now - 31 * DAY)
    h.record(transaction_id="KEPT", decision="clear", ts=now - 29 * DAY)
    h.close()

    h = DecisionLog(state, keep_days=30)  # start-up prunes
    assert [r.transaction_id for r in h.rows()] == ["KEPT"]
    assert h.prune(now=now + 2 * DAY) == 1  # a day later it is past 30 days too
    assert h.page()[1] == 0
    h.close()


def test_row_count_is_bounded(tmp_path):
    h = DecisionLog(tmp_path, keep_days=30, max_rows=5)
    for i in range(8):
        h.record(transaction_id=f"T{i}", decision="clear")
    h.prune()
    assert [r.transaction_id for r in h.rows()] == ["T3", "T4", "T5", "T6", "T7"]
    h.close()


def test_wal_lets_a_reader_see_rows_while_the_till_writes(log_):
    log_.record(transaction_id="T1", decision="clear")
    reader = sqlite3.connect(log_.path)
    assert reader.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    try:
        reader.execute("BEGIN")
        assert reader.execute("SELECT COUNT(*) FROM decisions").fetchone()[0] == 1
        log_.record(transaction_id="T2", decision="clear")  # not blocked by the open read
        assert log_.page()[1] == 2
    finally:
        reader.close()


def test_unusable_state_dir_gives_no_history_and_a_reason(tmp_path, caplog):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the state directory should be")
    with pytest.raises(HistoryError, match="AGEGATE_STATE_DIR"):
        DecisionLog(blocker / "state")
    with caplog.at_level(logging.ERROR):
        assert open_history(blocker / "state", keep_days=30) is None
    assert "no decision history" in caplog.text


def test_a_failing_write_is_logged_not_raised(tmp_path, caplog):
    h = DecisionLog(tmp_path)
    h.close()  # every statement now fails, as on a broken disk
    with caplog.at_level(logging.ERROR):
        h.record(transaction_id="T1", decision="clear")
    assert "cannot record clear for T1" in caplog.text


def test_pages_and_rows_follow_time_not_insert_order(log_):
    # Recorded out of order (an imported history, a clock set back): shown by when they happened.
    now = time.time()
    for tx, ago in (("MIDDLE", 2 * DAY), ("NEWEST", 0.0), ("OLDEST", 5 * DAY), ("SECOND", DAY)):
        log_.record(transaction_id=tx, decision="clear", ts=now - ago)
    assert [r.transaction_id for r in log_.page()[0]] == ["NEWEST", "SECOND", "MIDDLE", "OLDEST"]
    assert [r.transaction_id for r in log_.page(limit=2, offset=1)[0]] == ["SECOND", "MIDDLE"]
    assert [r.transaction_id for r in log_.rows(batch=1)] == ["OLDEST", "MIDDLE", "SECOND", "NEWEST"]
