"""The outbox on a real SQLite file: durable, oldest first, bounded with summaries dropped before alerts."""

from __future__ import annotations

import os
import sqlite3

import pytest

from agegate.edge.outbox import ALERT, SUMMARY, Outbox, OutboxError


def test_events_survive_reopening_and_come_back_oldest_first(tmp_path):
    box = Outbox(tmp_path)
    ids = [box.add(f"e{i}", ALERT if i % 2 else SUMMARY, f"t/{i}", f"p{i}".encode(), 1) for i in range(5)]
    box.acknowledged(ids[1])
    box.close()  # as after a power cut: only what is on disk counts
    again = Outbox(tmp_path)
    pending = again.pending()
    assert [p.row_id for p in pending] == [ids[0], ids[2], ids[3], ids[4]]
    assert [p.payload for p in pending] == [b"p0", b"p2", b"p3", b"p4"]
    assert again.pending(exclude={ids[0]}, limit=2)[0].row_id == ids[2]
    assert sqlite3.connect(tmp_path / "outbox.sqlite3").execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_full_outbox_drops_summaries_before_alerts_and_counts(tmp_path, caplog):
    box = Outbox(tmp_path, max_events=10)
    for i in range(6):
        box.add(f"a{i}", ALERT, "alerts", b"a", 1)
    for i in range(4):
        box.add(f"s{i}", SUMMARY, "transactions", b"s", 1)
    for i in range(4):  # four more alerts: the four summaries make room
        box.add(f"a{6 + i}", ALERT, "alerts", b"a", 1)
    assert len(box) == 10 and box.dropped == {ALERT: 0, SUMMARY: 4}
    assert {p.topic for p in box.pending()} == {"alerts"}
    box.add("a10", ALERT, "alerts", b"a", 1)  # only alerts left: the oldest goes, loudly
    assert box.dropped == {ALERT: 1, SUMMARY: 4} and len(box) == 10
    assert "dropped the oldest alert a0" in caplog.text
    assert "dropped the oldest transaction summary s0" in caplog.text


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into a read-only directory")
def test_read_only_state_dir_is_a_clear_error(tmp_path):
    tmp_path.chmod(0o500)
    try:
        with pytest.raises(OutboxError, match="AGEGATE_STATE_DIR"):
            Outbox(tmp_path / "state")
    finally:
        tmp_path.chmod(0o700)


def test_state_dir_that_is_a_file_is_a_clear_error(tmp_path):
    (tmp_path / "state").write_text("not a directory")
    with pytest.raises(OutboxError, match="AGEGATE_STATE_DIR: cannot use"):
        Outbox(tmp_path / "state")
