"""Challenge 25 decisions per transaction.

The POS tells us about a sale (start, items, ID checked, end); for a restricted item we
decide from the current customer's smoothed estimate and answer at once:

- estimate below the challenge age → ``age_check_required`` (``likely_minor`` below the legal age)
- no usable face (none seen, or estimates too spread to trust) → ``no_face``
- camera down → ``camera_unavailable``
- the detector or age model failing → ``cannot_assess``
- otherwise → ``clear``

The four that ask for a check (``CHECK_DECISIONS``: all but ``clear``) are also published
as alerts. A transaction that ends after a check was
required, with no ``id_checked``, raises ``unverified_sale``. Every transaction ends in one
anonymous summary.

Open transactions are also kept in a :class:`TransactionStore` (the outbox's SQLite file),
written before the POS is answered. A daemon killed mid-sale finds them at its next start
and ends them with ``ended_by: "restart"`` (raising the ``unverified_sale`` that is due:
the till cannot know that the sale did not go through). A clean shutdown ends them with
``ended_by: "shutdown"`` and no ``unverified_sale``: stopping the till is not the cashier's
doing, and the sale may still be completed after an ID check the till never hears of.

Threading: :meth:`TransactionBook.handle` is called from the HTTP server's worker threads
and the MQTT POS worker at once; a lock guards the open transactions. Waiting for a face
happens outside the lock, so one slow decision does not hold up other messages. Nothing is
published under the lock: the alerts and summaries of the transactions that end while it is
held are collected (:class:`_Ended`) and published once it is released, each transaction's
stored state forgotten only after its summary is in the outbox.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter, OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from threading import Lock
from typing import Callable, Iterator, Protocol

from .events import (
    Alert,
    Decision,
    Estimate,
    Event,
    ModelRef,
    PosAnswer,
    PosMessage,
    Thresholds,
    TransactionSummary,
    age_band,
    utcnow,
)

log = logging.getLogger(__name__)

CHECK_DECISIONS = ("age_check_required", "no_face", "camera_unavailable", "cannot_assess")
MESSAGES = {
    "clear": "Customer appears over the challenge age.",
    "age_check_required": "Challenge {challenge:g}: please check the customer's ID.",
    "no_face": "No face seen: please check the customer's ID.",
    "camera_unavailable": "Camera unavailable: please check the customer's ID.",
    "cannot_assess": "Age estimation unavailable: please check the customer's ID.",
}


def decision_thresholds(settings, manifest) -> Thresholds:
    """The thresholds a till decides with, for its settings and the model in service.

    With ``decision_threshold = calibrated`` the estimate threshold is the model's calibrated
    one (recorded in its manifest from validation data: the estimate under which it flagged
    99 % of under-18s) when that is above the challenge age; a policy's challenge age is never
    lowered, and a model without a calibration decides at the challenge age.
    """
    base = Thresholds(challenge_age=settings.challenge_age, legal_age=settings.legal_age)
    if not settings.uses_calibrated_threshold:
        return base
    calibration = manifest.validation.calibrated if manifest.validation is not None else None
    if calibration is None:
        log.warning("AGEGATE_DECISION_THRESHOLD=calibrated, but model %s records no calibrated threshold: deciding at the challenge age %g",
                    manifest.name, settings.challenge_age)
        return base
    threshold = max(settings.challenge_age, calibration.threshold)
    log.info("deciding at estimates under %g: model %s's calibrated threshold %g (flags %.1f %% of under-18s, %.1f %% of people 30+ on its validation faces)",
             threshold, manifest.name, calibration.threshold, 100 * (calibration.under18_flagged or 0), 100 * (calibration.over30_flagged or 0))
    return base.model_copy(update={"estimate_threshold": threshold, "calibrated": True})


class TransactionStore(Protocol):
    """Where open transactions outlive the process (edge/outbox.py's Outbox); errors raise OutboxError."""

    def keep_transaction(self, transaction_id: str, state: str) -> None: ...

    def forget_transaction(self, transaction_id: str) -> None: ...

    def open_transactions(self) -> list[str]: ...


class Vision(Protocol):
    """What the decision needs from the camera side."""

    def customer_estimate(self) -> Estimate | None: ...

    def camera_ok(self) -> bool: ...

    def failure(self) -> str | None:
        """Why faces cannot be assessed right now (detector or model failing), or None."""


@dataclass
class _Transaction:
    transaction_id: str
    started_at: datetime = field(default_factory=utcnow)
    last_activity: float = field(default_factory=time.monotonic)
    items: int = 0
    restricted_items: int = 0
    decision: Decision | None = None
    answer: PosAnswer | None = None
    id_checked: bool = False
    best_estimate: Estimate | None = None
    items_by_category: Counter[str] = field(default_factory=Counter)
    restricted_items_by_category: Counter[str] = field(default_factory=Counter)
    operator_id: str | None = None

    def count_item(self, msg: PosMessage) -> None:
        self.items += 1
        if msg.category is not None:
            self.items_by_category[msg.category] += 1
        if msg.restricted:
            self.restricted_items += 1
            if msg.category is not None:
                self.restricted_items_by_category[msg.category] += 1

    def to_json(self) -> str:
        """The decision state a restart needs to end this transaction honestly."""
        return json.dumps({
            "transaction_id": self.transaction_id,
            "started_at": self.started_at.isoformat(),
            "items": self.items,
            "restricted_items": self.restricted_items,
            "decision": self.decision,
            "answer": self.answer.model_dump(mode="json") if self.answer else None,
            "id_checked": self.id_checked,
            "best_estimate": self.best_estimate.model_dump(mode="json") if self.best_estimate else None,
            "items_by_category": self.items_by_category,
            "restricted_items_by_category": self.restricted_items_by_category,
            "operator_id": self.operator_id,
        })

    @classmethod
    def from_json(cls, text: str) -> "_Transaction":
        state = json.loads(text)
        return cls(
            transaction_id=state["transaction_id"],
            started_at=datetime.fromisoformat(state["started_at"]),
            items=state["items"],
            restricted_items=state["restricted_items"],
            decision=state["decision"],
            answer=PosAnswer.model_validate(state["answer"]) if state["answer"] else None,
            id_checked=state["id_checked"],
            best_estimate=Estimate.model_validate(state["best_estimate"]) if state["best_estimate"] else None,
            # Added in 0.3: a sale stored by an older daemon has no per-category counts nor operator.
            items_by_category=Counter(state.get("items_by_category") or {}),
            restricted_items_by_category=Counter(state.get("restricted_items_by_category") or {}),
            operator_id=state.get("operator_id"),
        )


@dataclass
class _Ended:
    """A transaction ended under the book's lock, with the events to publish once it is released."""

    transaction_id: str
    events: list[Event]


class TransactionBook:
    """Open transactions and the decisions made in them."""

    def __init__(
        self,
        *,
        store_id: str,
        till_id: str,
        thresholds: Thresholds,
        vision: Vision,
        model_ref: Callable[[], ModelRef | None],
        publish: Callable[[Event], None],
        on_decision: Callable[[PosAnswer], None] | None = None,
        face_wait_s: float = 1.5,
        max_spread: float = 8.0,
        max_open: int = 64,
        idle_timeout_s: float = 3600.0,
        poll_s: float = 0.05,
        timed: Callable[[float], None] | None = None,
        store: TransactionStore | None = None,
    ):
        self.store_id, self.till_id = store_id, till_id
        self.thresholds = thresholds
        self.vision = vision
        self.model_ref = model_ref
        self.publish = publish
        self.on_decision = on_decision  # told every new decision (clear included), outside the lock
        self.face_wait_s = face_wait_s
        self.max_spread = max_spread
        self.max_open = max_open
        self.idle_timeout_s = idle_timeout_s
        self.poll_s = poll_s
        self.timed = timed  # told the seconds each new decision took (face wait and history included, publishing not)
        self.store = store  # None: open transactions are in memory only (no usable state directory)
        self._open: OrderedDict[str, _Transaction] = OrderedDict()
        self._lock = Lock()
        self._decisions: Counter[str] = Counter()  # since the last take_decision_counts(), under _lock

    # --- entry point --------------------------------------------------------------------

    def decision_counts(self) -> dict[str, int]:
        """Decisions made since the last take_decision_counts(), by kind."""
        with self._lock:
            return dict(self._decisions)

    def take_decision_counts(self) -> dict[str, int]:
        """Decisions made since the last call, by kind, and a fresh count from now on.

        Read and reset in one step under the lock that counts them: a decision made meanwhile
        lands in this interval or the next, never in neither."""
        with self._lock:
            taken, self._decisions = self._decisions, Counter()
        return dict(taken)

    def handle(self, msg: PosMessage) -> PosAnswer:
        if msg.type == "item" and msg.restricted:
            return self._restricted_item(msg)
        with self._locked() as ended:
            if msg.type in ("id_checked", "transaction_end") and msg.transaction_id not in self._open:
                # Ending or ID-checking a sale that is not open must not invent one: a repeated
                # transaction_end would publish a second summary, an id_checked would open a
                # transaction that lingers until the idle timeout. The POS learns its mistake.
                log.warning("%s for transaction %s, which is not open: ignored", msg.type, msg.transaction_id)
                return self._plain_answer(msg.transaction_id, unknown_transaction=True, message=(
                    f"Transaction {msg.transaction_id} is not open (never started or already ended): nothing recorded."))
            tx = self._get_or_start(msg.transaction_id, ended, msg.operator_id)
            if msg.type == "item":
                tx.count_item(msg)
            elif msg.type == "id_checked":
                tx.id_checked = True
            elif msg.type == "transaction_end":
                self._end(tx, "pos", ended)
                return self._plain_answer(tx.transaction_id)
            self._keep(tx)
            return self._plain_answer(tx.transaction_id)

    def expire_idle(self, now: float | None = None) -> int:
        """End transactions the POS forgot (no message for idle_timeout_s); returns how many."""
        now = time.monotonic() if now is None else now
        with self._locked() as ended:
            stale = [t for t in self._open.values() if now - t.last_activity > self.idle_timeout_s]
            for tx in stale:
                self._end(tx, "timeout", ended)
        return len(stale)

    def close_all(self, reason: str = "shutdown") -> None:
        with self._locked() as ended:
            for tx in list(self._open.values()):
                self._end(tx, reason, ended)

    def end_interrupted(self) -> int:
        """End the transactions a killed daemon left open in the store (``ended_by: "restart"``);
        returns how many. Called once at start, before the POS is served."""
        if self.store is None:
            return 0
        try:
            states = self.store.open_transactions()
        except Exception as exc:  # the outbox says why; the till must start anyway
            log.error("cannot read the transactions left open by the last run: %s", exc)
            return 0
        count = 0
        with self._locked() as ended:
            for state in states:
                try:
                    tx = _Transaction.from_json(state)
                except (ValueError, KeyError, TypeError) as exc:
                    log.error("an open transaction stored by the last run cannot be read (%s); it is dropped: %.200s",
                              exc, state)
                    continue
                log.warning("transaction %s was open when the daemon last stopped without a shutdown: ending it",
                            tx.transaction_id)
                self._end(tx, "restart", ended)
                count += 1
        return count

    @property
    def open_count(self) -> int:
        return len(self._open)

    # --- restricted items ----------------------------------------------------------------

    def _restricted_item(self, msg: PosMessage) -> PosAnswer:
        started = time.perf_counter()
        with self._locked() as ended:
            tx = self._get_or_start(msg.transaction_id, ended, msg.operator_id)
            tx.count_item(msg)
            operator_id = tx.operator_id
            # A transaction decides once: a customer asked for ID stays asked, one seen as
            # clear stays clear. Only "could not assess" is worth another look.
            if tx.answer is not None and tx.decision in ("clear", "age_check_required"):
                self._keep(tx)  # the item counts
                return self._repeat(tx)
        estimate, decision = self._assess()
        answer, alert = self._decide(msg, estimate, decision, operator_id)
        with self._locked() as ended:
            tx = self._get_or_start(msg.transaction_id, ended)
            if tx.id_checked:  # ID was checked while we looked: nothing left to alert
                answer = answer.model_copy(update={"check_id": False, "alert_event_id": None})
                alert = None
            tx.decision, tx.answer = decision, answer
            if estimate is not None:
                tx.best_estimate = estimate
            self._decisions[decision] += 1
            self._keep(tx)  # on disk before the POS hears the decision
        took = time.perf_counter() - started
        if alert is not None:
            self.publish(alert)
        if self.on_decision is not None:
            recorded = time.perf_counter()
            self.on_decision(answer)
            took += time.perf_counter() - recorded
        if self.timed is not None:
            self.timed(took)
        log.info("transaction %s: %s (%s)", msg.transaction_id, decision, _describe(estimate))
        return answer

    def _assess(self) -> tuple[Estimate | None, Decision]:
        """The customer's estimate, waiting up to face_wait_s for a usable one."""
        deadline = time.monotonic() + self.face_wait_s
        while True:
            if not self.vision.camera_ok():
                return None, "camera_unavailable"
            if self.vision.failure() is not None:
                return None, "cannot_assess"
            estimate = self.vision.customer_estimate()
            if estimate is not None and estimate.spread <= self.max_spread:
                return estimate, ("age_check_required" if estimate.age < self.thresholds.flag_below else "clear")
            if time.monotonic() >= deadline:
                return estimate, "no_face"
            time.sleep(self.poll_s)

    def _decide(self, msg: PosMessage, estimate: Estimate | None, decision: Decision,
                operator_id: str | None) -> tuple[PosAnswer, Alert | None]:
        model = self.model_ref()
        likely_minor = decision == "age_check_required" and estimate is not None and estimate.age < self.thresholds.legal_age
        alert = None
        if decision in CHECK_DECISIONS:
            alert = Alert(
                type=decision,
                store_id=self.store_id,
                till_id=self.till_id,
                model=model,
                transaction_id=msg.transaction_id,
                category=msg.category,
                operator_id=operator_id,
                likely_minor=likely_minor,
                estimate=estimate,
                thresholds=self.thresholds,
                reason=_reason(decision, estimate, self.thresholds, self.vision.failure()),
            )
        answer = PosAnswer(
            transaction_id=msg.transaction_id,
            decision=decision,
            check_id=decision in CHECK_DECISIONS,
            likely_minor=likely_minor,
            message=MESSAGES[decision].format(challenge=self.thresholds.challenge_age),
            estimate=estimate,
            thresholds=self.thresholds,
            alert_event_id=alert.event_id if alert else None,
            model=model,
        )
        return answer, alert

    def _repeat(self, tx: _Transaction) -> PosAnswer:
        assert tx.answer is not None
        check = tx.decision in CHECK_DECISIONS and not tx.id_checked
        return tx.answer.model_copy(update={"check_id": check, "alert_event_id": None})

    # --- bookkeeping (lock held) ---------------------------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[list[_Ended]]:
        """Hold the lock; the transactions ended meanwhile (collected in the list it yields)
        are published after it is released, even if the block raised."""
        ended: list[_Ended] = []
        try:
            with self._lock:
                yield ended
        finally:
            for done in ended:
                self._publish_ended(done)

    def _publish_ended(self, done: _Ended) -> None:
        try:
            for event in done.events:
                self.publish(event)
        except Exception:  # the state stays stored: the next start ends the sale again, nothing is lost
            log.exception("publishing the end of transaction %s failed", done.transaction_id)
            return
        with self._lock:
            # After the summary is stored: a kill in between repeats it, never loses it. Not if
            # the POS has reopened the same id meanwhile: that state is the new sale's.
            if done.transaction_id not in self._open:
                self._forget(done.transaction_id)

    def _get_or_start(self, transaction_id: str, ended: list[_Ended], operator_id: str | None = None) -> _Transaction:
        tx = self._open.get(transaction_id)
        if tx is None:
            # The POS may skip transaction_start (or we restarted mid-sale): start implicitly.
            tx = _Transaction(transaction_id)
            self._open[transaction_id] = tx
            while len(self._open) > self.max_open:
                oldest = next(iter(self._open.values()))
                log.warning("more than %d open transactions: ending %s", self.max_open, oldest.transaction_id)
                self._end(oldest, "evicted", ended)
        else:
            self._open.move_to_end(transaction_id)
        if tx.operator_id is None and operator_id is not None:
            # From transaction_start, or from the first message that names one when the POS skipped it.
            tx.operator_id = operator_id
        tx.last_activity = time.monotonic()
        return tx

    def _keep(self, tx: _Transaction) -> None:
        if self.store is None:
            return
        try:
            self.store.keep_transaction(tx.transaction_id, tx.to_json())
        except Exception as exc:  # the POS is answered anyway; only a kill before the end loses it
            log.error("transaction %s is kept in memory only: %s", tx.transaction_id, exc)

    def _forget(self, transaction_id: str) -> None:
        if self.store is None:
            return
        try:
            self.store.forget_transaction(transaction_id)
        except Exception as exc:  # at worst the next start ends it again: one more summary, at-least-once
            log.error("ended transaction %s is still stored as open: %s", transaction_id, exc)

    def _end(self, tx: _Transaction, ended_by: str, ended: list[_Ended]) -> None:
        """Close tx and add its events to ``ended``, for :meth:`_locked` to publish after the lock."""
        self._open.pop(tx.transaction_id, None)
        if tx.best_estimate is None and ended_by != "restart":  # after a restart the customer is someone else
            tx.best_estimate = self.vision.customer_estimate()
        model = self.model_ref()
        # The thresholds the transaction was decided with (a model swap may have changed them since).
        thresholds = tx.answer.thresholds if tx.answer else self.thresholds
        events: list[Event] = []
        if tx.decision == "age_check_required" and not tx.id_checked and ended_by != "shutdown":
            events.append(
                Alert(
                    type="unverified_sale",
                    store_id=self.store_id,
                    till_id=self.till_id,
                    model=model,
                    transaction_id=tx.transaction_id,
                    operator_id=tx.operator_id,
                    likely_minor=tx.answer.likely_minor if tx.answer else False,
                    estimate=tx.best_estimate,
                    thresholds=thresholds,
                    reason=("The till restarted during a sale in which an age check was required, and no ID check "
                            "was recorded before." if ended_by == "restart" else
                            "The sale ended after an age check was required, but no ID check was recorded."),
                )
            )
        events.append(
            TransactionSummary(
                store_id=self.store_id,
                till_id=self.till_id,
                model=model,
                transaction_id=tx.transaction_id,
                started_at=tx.started_at,
                ended_at=utcnow(),
                ended_by=ended_by,  # type: ignore[arg-type]
                age_band=age_band(tx.best_estimate.age if tx.best_estimate else None),
                items=tx.items,
                restricted_items=tx.restricted_items,
                items_by_category=dict(tx.items_by_category),
                restricted_items_by_category=dict(tx.restricted_items_by_category),
                operator_id=tx.operator_id,
                decision=tx.decision,
                id_checked=tx.id_checked,
                outcome=_outcome(tx, ended_by),
                thresholds=thresholds,
            )
        )
        ended.append(_Ended(tx.transaction_id, events))

    def _plain_answer(self, transaction_id: str, **fields) -> PosAnswer:
        return PosAnswer(transaction_id=transaction_id, thresholds=self.thresholds, model=self.model_ref(), **fields)


def _outcome(tx: _Transaction, ended_by: str) -> str:
    if tx.restricted_items == 0:
        return "no_restricted_items"
    if tx.id_checked:
        return "id_checked"
    if tx.decision == "clear":
        return "clear"
    if tx.decision == "age_check_required":
        # A shutdown cut the sale short: whether ID was checked afterwards is unknown to the till.
        return "interrupted" if ended_by == "shutdown" else "unverified_sale"
    return "not_assessed"


def _describe(estimate: Estimate | None) -> str:
    if estimate is None:
        return "no estimate"
    return f"age {estimate.age:.1f} ± {estimate.spread:.1f} from {estimate.samples} frames"


def _reason(decision: Decision, estimate: Estimate | None, t: Thresholds, failure: str | None = None) -> str:
    if decision == "age_check_required":
        assert estimate is not None
        minor = " and under the legal age" if estimate.age < t.legal_age else ""
        if t.calibrated:
            return f"Estimated age {estimate.age:.1f} is under {t.flag_below:g}, the model's calibrated threshold for the challenge age {t.challenge_age:g}{minor}."
        return f"Estimated age {estimate.age:.1f} is under the challenge age {t.challenge_age:g}{minor}."
    if decision == "camera_unavailable":
        return "The camera is unavailable, so the customer could not be assessed."
    if decision == "cannot_assess":
        return f"Age estimation is failing, so the customer could not be assessed: {failure}"
    if estimate is not None:
        return f"The customer's estimates disagree too much to trust (spread {estimate.spread:.1f} years)."
    return "No face was seen in the customer zone."
