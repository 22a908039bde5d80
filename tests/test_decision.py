"""Challenge 25 rules per transaction, on the TransactionBook with a scripted view of the customer."""

from __future__ import annotations

import threading

import pytest

from agegate.edge.decision import TransactionBook
from agegate.edge.events import Alert, Estimate, ModelRef, PosMessage, Thresholds, TransactionSummary

MODEL = ModelRef(name="m", version="1", sha256="0" * 64)


class ScriptedVision:
    """Answers what the test sets; the real vision loop is exercised in test_e2e.py."""

    def __init__(self, estimate: Estimate | None = None, camera: bool = True, failing: str | None = None):
        self.estimate, self.camera, self.failing = estimate, camera, failing

    def customer_estimate(self):
        return self.estimate

    def camera_ok(self):
        return self.camera

    def failure(self):
        return self.failing


def make_book(vision, **kw):
    published = []
    book = TransactionBook(
        store_id="s1", till_id="t1", thresholds=Thresholds(challenge_age=25, legal_age=18), vision=vision,
        model_ref=lambda: MODEL, publish=published.append, face_wait_s=kw.pop("face_wait_s", 0.2), **kw,
    )
    return book, published


def pos(type_, tx="T1", restricted=False):
    return PosMessage(type=type_, transaction_id=tx, category="alcohol" if restricted else "bakery", restricted=restricted)


@pytest.mark.parametrize(
    "age, decision, minor",
    [(15.0, "age_check_required", True), (21.0, "age_check_required", False), (24.9, "age_check_required", False),
     (25.0, "clear", False), (47.0, "clear", False)],
)
def test_thresholds(age, decision, minor):
    book, published = make_book(ScriptedVision(Estimate(age=age, spread=1.0, samples=9)))
    answer = book.handle(pos("item", restricted=True))
    assert (answer.decision, answer.likely_minor) == (decision, minor)
    assert answer.check_id is (decision != "clear")
    alerts = [e for e in published if isinstance(e, Alert)]
    if decision == "clear":
        assert alerts == [] and answer.alert_event_id is None
    else:
        assert [a.type for a in alerts] == [decision] and alerts[0].event_id == answer.alert_event_id
        assert alerts[0].model == MODEL and alerts[0].estimate.age == age


def test_no_face_after_waiting_and_camera_down():
    book, published = make_book(ScriptedVision(None))
    assert book.handle(pos("item", restricted=True)).decision == "no_face"
    book2, published2 = make_book(ScriptedVision(Estimate(age=40, spread=1, samples=5), camera=False))
    assert book2.handle(pos("item", restricted=True)).decision == "camera_unavailable"
    assert [a.type for a in published2 if isinstance(a, Alert)] == ["camera_unavailable"]


def test_too_spread_estimates_are_not_trusted():
    book, _ = make_book(ScriptedVision(Estimate(age=40, spread=12, samples=5)), max_spread=8)
    assert book.handle(pos("item", restricted=True)).decision == "no_face"


def test_a_face_arriving_while_waiting_decides():
    vision = ScriptedVision(None)
    book, _ = make_book(vision, face_wait_s=3.0)
    threading.Timer(0.3, lambda: setattr(vision, "estimate", Estimate(age=16, spread=0.5, samples=2))).start()
    answer = book.handle(pos("item", restricted=True))
    assert answer.decision == "age_check_required" and answer.likely_minor


def test_unverified_sale_and_summary():
    book, published = make_book(ScriptedVision(Estimate(age=19, spread=1, samples=9)))
    book.handle(pos("transaction_start"))
    book.handle(pos("item"))
    book.handle(pos("item", restricted=True))
    book.handle(pos("item", restricted=True))  # same transaction: no second alert
    book.handle(pos("transaction_end"))
    types = [getattr(e, "type") for e in published]
    assert types == ["age_check_required", "unverified_sale", "transaction_summary"]
    summary = published[-1]
    assert isinstance(summary, TransactionSummary)
    assert (summary.age_band, summary.items, summary.restricted_items, summary.outcome, summary.id_checked) == (
        "18-24", 3, 2, "unverified_sale", False)
    assert book.open_count == 0


def test_id_checked_means_no_unverified_sale():
    book, published = make_book(ScriptedVision(Estimate(age=19, spread=1, samples=9)))
    book.handle(pos("item", restricted=True))
    book.handle(pos("id_checked"))
    again = book.handle(pos("item", restricted=True))
    assert again.decision == "age_check_required" and again.check_id is False
    book.handle(pos("transaction_end"))
    assert [e.type for e in published] == ["age_check_required", "transaction_summary"]
    assert published[-1].outcome == "id_checked"


def test_transactions_without_restricted_items_and_bounded_open_set():
    book, published = make_book(ScriptedVision(Estimate(age=33, spread=1, samples=9)), max_open=5)
    for i in range(12):
        book.handle(pos("item", tx=f"T{i}"))
    assert book.open_count == 5
    evicted = [e for e in published if isinstance(e, TransactionSummary)]
    assert len(evicted) == 7 and {e.ended_by for e in evicted} == {"evicted"}
    assert {e.outcome for e in evicted} == {"no_restricted_items"} and {e.age_band for e in evicted} == {"25-34"}


def test_idle_transactions_expire_and_shutdown_closes_the_rest():
    book, published = make_book(ScriptedVision(None), idle_timeout_s=10)
    book.handle(pos("transaction_start", tx="old"))
    book.handle(pos("transaction_start", tx="new"))
    import time
    assert book.expire_idle(now=time.monotonic() + 11) == 2
    book.handle(pos("transaction_start", tx="last"))
    book.close_all()
    assert [(e.transaction_id, e.ended_by) for e in published] == [("old", "timeout"), ("new", "timeout"), ("last", "shutdown")]


def test_a_failing_model_means_cannot_assess():
    book, published = make_book(ScriptedVision(None, failing="RuntimeError: gather index out of bounds"))
    answer = book.handle(pos("item", restricted=True))
    assert (answer.decision, answer.check_id) == ("cannot_assess", True)
    assert "gather index out of bounds" in published[0].reason


def test_decision_counts_taken_while_tills_decide_lose_nothing():
    """The stats loop takes the counts while POS requests are decided on other threads: every
    decision must land in exactly one interval (the stats loop used to copy, then clear, outside
    the lock that counts them, and lost what was decided in between)."""
    import sys

    book, _ = make_book(ScriptedVision(Estimate(age=40.0, spread=1.0, samples=9)))
    per_thread, threads = 400, 4
    taken: list[dict[str, int]] = []
    done = threading.Event()

    def till(n: int) -> None:
        for i in range(per_thread):
            book.handle(pos("item", tx=f"T{n}-{i}", restricted=True))
            book.handle(pos("transaction_end", tx=f"T{n}-{i}"))

    def stats_loop() -> None:
        while not done.is_set():
            taken.append(book.take_decision_counts())
        taken.append(book.take_decision_counts())

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible, so a window is hit if there is one
    try:
        workers = [threading.Thread(target=till, args=(n,)) for n in range(threads)]
        reader = threading.Thread(target=stats_loop)
        reader.start()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        done.set()
        reader.join()
    finally:
        sys.setswitchinterval(interval)
    assert sum(c.get("clear", 0) for c in taken) == per_thread * threads
    assert book.decision_counts() == {}


def test_summary_counts_items_per_category_and_carries_the_operator():
    """Schema version 2: what was bought (per POS category) and by whose till login, never more."""
    book, published = make_book(ScriptedVision(Estimate(age=19, spread=1, samples=9)))
    book.handle(PosMessage(type="transaction_start", transaction_id="T1", operator_id="op-7f3a"))
    for category, restricted in [("alcohol", True), ("alcohol", True), ("bakery", False), (None, False), ("tobacco", True)]:
        book.handle(PosMessage(type="item", transaction_id="T1", category=category, restricted=restricted))
    book.handle(pos("transaction_end"))
    alert, unverified, summary = published
    assert (alert.type, alert.operator_id, unverified.type, unverified.operator_id) == (
        "age_check_required", "op-7f3a", "unverified_sale", "op-7f3a")
    assert summary.items == 5 and summary.restricted_items == 3
    assert summary.items_by_category == {"alcohol": 2, "bakery": 1, "tobacco": 1}  # the uncategorised item in `items` only
    assert summary.restricted_items_by_category == {"alcohol": 2, "tobacco": 1}
    assert summary.operator_id == "op-7f3a" and summary.schema_version == 2


def test_a_sale_without_an_operator_says_none_and_the_counts_survive_a_restart(tmp_path):
    from agegate.edge.outbox import Outbox

    store = Outbox(tmp_path)
    book, _ = make_book(ScriptedVision(Estimate(age=40, spread=1, samples=9)), store=store)
    book.handle(PosMessage(type="transaction_start", transaction_id="T9", operator_id="till-login-12"))
    book.handle(PosMessage(type="item", transaction_id="T9", category="wine", restricted=True))
    # The daemon is killed here; the next one ends the sale from what the store kept.
    again, published = make_book(ScriptedVision(None), store=store)
    assert again.end_interrupted() == 1
    (summary,) = [e for e in published if isinstance(e, TransactionSummary)]
    assert (summary.items_by_category, summary.restricted_items_by_category, summary.operator_id) == (
        {"wine": 1}, {"wine": 1}, "till-login-12")
    book2, published2 = make_book(ScriptedVision(Estimate(age=40, spread=1, samples=9)))
    book2.handle(pos("item"))
    book2.handle(pos("transaction_end"))
    assert published2[-1].operator_id is None and published2[-1].items_by_category == {"bakery": 1}


def test_operator_id_is_an_opaque_token_not_free_text():
    with pytest.raises(ValueError):
        PosMessage(type="transaction_start", transaction_id="T1", operator_id="Jane Smith")  # a name has a space
    with pytest.raises(ValueError):
        PosMessage(type="transaction_start", transaction_id="T1", operator_id="x" * 65)


def _ends(book, way: str) -> None:
    """End transaction T1 (opened with a restricted item by the caller) in one of the book's ways."""
    import time

    if way == "transaction_end":
        book.handle(pos("transaction_end"))
    elif way == "idle":
        assert book.expire_idle(now=time.monotonic() + 3600 + 1) == 1
    elif way == "shutdown":
        book.close_all()
    elif way == "evicted":
        book.handle(pos("transaction_start", tx="T2"))  # max_open=1: T1 is pushed out
    elif way == "restart":
        assert book.end_interrupted() == 1


@pytest.mark.parametrize("way", ["transaction_end", "idle", "shutdown", "evicted", "restart"])
def test_nothing_is_published_while_the_book_holds_its_lock(tmp_path, way):
    """A subscriber of the events that needs the book (another thread reading its counts) must
    not wait for the publish to finish: the book publishes after releasing its lock."""
    from agegate.edge.outbox import Outbox

    store = Outbox(tmp_path)
    seen, waited = [], []

    def publish(event):
        reader = threading.Thread(target=book.decision_counts)  # takes the book's lock
        reader.start()
        reader.join(2.0)
        waited.append(reader.is_alive())  # still waiting for the lock: it finishes once the book lets go
        seen.append(event)

    vision = ScriptedVision(Estimate(age=15, spread=1, samples=9))
    first = TransactionBook(store_id="s1", till_id="t1", thresholds=Thresholds(challenge_age=25, legal_age=18),
                            vision=vision, model_ref=lambda: MODEL, publish=lambda e: None, face_wait_s=0.2, store=store)
    first.handle(pos("item", restricted=True))  # T1: age_check_required, kept in the store
    book = TransactionBook(store_id="s1", till_id="t1", thresholds=Thresholds(challenge_age=25, legal_age=18),
                           vision=vision, model_ref=lambda: MODEL, publish=publish, face_wait_s=0.2, store=store,
                           max_open=1)
    if way != "restart":
        book.handle(pos("item", restricted=True))  # T1 again, in this book
        seen.clear(), waited.clear()
    _ends(book, way)
    kinds = [(e.type, e.transaction_id) for e in seen]
    expected = ([] if way == "shutdown" else [("unverified_sale", "T1")]) + [("transaction_summary", "T1")]
    assert kinds == expected
    assert waited == [False] * len(expected), "an event was published while the book's lock was held"
    # forgotten once its summary was out (by its id: a bare "T1" is in any timestamp from 10:00 to 19:59)
    assert '"transaction_id": "T1"' not in "".join(store.open_transactions())


def test_a_sale_reopened_while_its_end_is_published_stays_stored(tmp_path):
    """The POS reuses a transaction id while the old sale's summary is being published: the
    new sale's stored state must not be forgotten with the old one."""
    from agegate.edge.outbox import Outbox

    store = Outbox(tmp_path)

    def publish(event):
        if isinstance(event, TransactionSummary) and event.transaction_id == "T1" and event.ended_by == "pos":
            reopen = threading.Thread(target=book.handle, args=(pos("item", tx="T1"),))
            reopen.start()
            reopen.join(5)

    book = TransactionBook(store_id="s1", till_id="t1", thresholds=Thresholds(challenge_age=25, legal_age=18),
                           vision=ScriptedVision(Estimate(age=40, spread=1, samples=9)), model_ref=lambda: MODEL,
                           publish=publish, face_wait_s=0.2, store=store)
    book.handle(pos("item", tx="T1"))
    book.handle(pos("transaction_end", tx="T1"))
    assert book.open_count == 1
    (state,) = store.open_transactions()
    assert '"transaction_id": "T1"' in state and '"items": 1' in state
