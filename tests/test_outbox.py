"""The outbox on a real SQLite file: durable, oldest first, bounded with summaries dropped before alerts."""

from __future__ import annotations

import os
import sqlite3

import pytest
from conftest import fill_disk, mount_tmpfs

from agegate.edge.outbox import ALERT, SUMMARY, Outbox, OutboxError


def test_events_survive_reopening_and_come_back_oldest_first(tmp_path):
    box = Outbox(tmp_path)
    ids = [box.add(f"e{i}", ALERT if i % 2 else SUMMARY, f"t/{i}", f"p{i}".encode(), 1) for i in range(5)]
    box.acknowledged(ids[1])
    box.close()  # a clean close; reopening reads back only what the file holds
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


def _damage_pages(db_file, pages, page_size=4096):
    """Overwrite whole pages of a real SQLite file with garbage, as a bad sector or a torn write would."""
    import random

    rng = random.Random(7)
    with open(db_file, "r+b") as f:
        for n in pages:
            f.seek(n * page_size)
            f.write(bytes(rng.randrange(256) for _ in range(page_size)))


def test_damaged_pages_are_quarantined_readable_rows_salvaged_and_a_fresh_outbox_started(tmp_path, caplog):
    box = Outbox(tmp_path)
    for i in range(300):  # about 40 leaf pages of ~700-byte events
        box.add(f"e{i}", ALERT, "agegate/s/t/alerts", b"x" * 700, 1)
    box.close()
    db_file = tmp_path / "outbox.sqlite3"
    pages = db_file.stat().st_size // 4096
    assert pages > 20
    _damage_pages(db_file, [pages // 2, pages // 2 + 1])
    with pytest.raises(sqlite3.DatabaseError):  # what the daemon's main loop used to die of
        sqlite3.connect(db_file).execute("SELECT id, topic, payload FROM outbox ORDER BY id").fetchall()

    again = Outbox(tmp_path)  # no exception: quarantined, salvaged, fresh
    assert again.quarantined is not None and again.quarantined.exists()
    assert again.quarantined.name.startswith("outbox.sqlite3.corrupt-")
    assert 200 <= again.salvaged < 300, again.salvaged  # most rows survive two bad pages
    pending = again.pending(limit=1000)
    assert len(pending) == len(again) == again.salvaged
    assert pending[0].payload == b"x" * 700
    assert "is damaged" in caplog.text and "salvaged" in caplog.text
    new = again.add("after", ALERT, "agegate/s/t/alerts", b"y", 1)  # and it keeps working
    assert again.pending(limit=1000)[-1].row_id == new
    again.close()
    assert sqlite3.connect(db_file).execute("PRAGMA quick_check").fetchone()[0] == "ok"


def test_whole_file_garbage_is_quarantined_too(tmp_path):
    (tmp_path / "outbox.sqlite3").write_bytes(b"\x00garbage" * 1000)
    box = Outbox(tmp_path)
    assert box.quarantined is not None and box.salvaged == 0 and len(box) == 0
    box.add("e", ALERT, "t", b"p", 1)
    assert len(box) == 1


@pytest.mark.root
def test_on_a_full_state_disk_the_reserve_keeps_room_for_alerts_not_summaries(tmp_path):
    import subprocess

    state = tmp_path / "state"
    mount_tmpfs(state, "4m")
    try:
        box = Outbox(state)
        box.add("before", ALERT, "alerts", b"a" * 500, 1)
        fill_disk(state)  # the disk fills up (logs, a runaway file)
        ids = [box.add(f"alert{i}", ALERT, "alerts", b"a" * 500, 1) for i in range(20)]  # still durable
        assert len(set(ids)) == 20 and not (state / "outbox.reserve").exists()
        with pytest.raises(OutboxError, match="kept for alerts"):
            box.add("summary", SUMMARY, "transactions", b"s" * 500, 1)
        box.close()
        again = Outbox(state)
        assert len(again) == 21  # on disk: they survive a restart
        again.close()  # an open file would keep the tmpfs busy and mounted after the test
    finally:
        if subprocess.run(["umount", str(state)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(state)], capture_output=True)
