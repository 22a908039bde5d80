"""The publisher: every event the till emits goes out through here, one way, to the transport.

Topics, under ``base = {prefix}/{store}/{till}`` (:data:`TOPIC_BY_TYPE`):

- ``base/alerts``        Alert, QoS 1
- ``base/transactions``  TransactionSummary, QoS 1
- ``base/status``        Status, QoS 1, retained; ``offline`` is registered as the last will
- ``base/stats``         Stats, QoS 0

(``base/pos`` is the MQTT POS adapter's, pos_mqtt.py.)

Delivery of alerts and summaries is at-least-once, through the durable outbox (outbox.py):
:meth:`Publisher.publish` stores the event and returns; the publisher's own thread hands
stored rows to the transport, oldest first, and deletes each row once the broker's PUBACK
for it has arrived. paho keeps the messages it holds across reconnects and re-sends them;
rows it never got (the broker was away, a restart, more than :data:`INFLIGHT_MAX` waiting)
are handed over by that same thread, so a row is never handed to paho twice in one run.

An alert or summary that the outbox cannot take (state disk full or unusable) is still sent,
from memory, at once: paho's queue (bounded, kept across reconnects) holds it until the
broker's PUBACK, :attr:`Publisher.pending_in_memory` counts such events, so the status never
says nothing is pending while they are only in RAM, and :meth:`Publisher.durable` tells the
POS answer. Status and stats are sent at once too; they are not kept.

Threading:

- :meth:`publish`, :meth:`publish_status`, :meth:`durable` and the figures may be called
  from any thread; ``publish`` never waits for the broker (it waits for the outbox's write).
- The ``publisher`` thread is the outbox's only reader: it is woken by a new stored event, a
  connection, an acknowledgement, and once a second; each turn it deletes the acknowledged
  rows (one statement for all of them) and hands the transport the next stored rows while
  connected and fewer than INFLIGHT_MAX are unacknowledged.
- Acknowledgements arrive on paho's network thread (:meth:`_on_ack`): they are only recorded
  and the publisher thread woken, so paho's loop never waits for the disk.
- ``self._lock`` guards the in-flight bookkeeping only and is never held while calling into
  the transport or the outbox.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from typing import Callable

from .. import __version__
from .config import Settings
from .events import Alert, Event, ModelRef, Stats, Status, TransactionSummary
from .mqtt import PAHO_QUEUE_MAX, MqttTransport, PublishError
from .outbox import ALERT, SUMMARY, KeptForAlerts, Outbox, OutboxError

log = logging.getLogger(__name__)

TOPIC_BY_TYPE: dict[type[Event], tuple[str, int, bool]] = {
    Alert: ("alerts", 1, False),
    TransactionSummary: ("transactions", 1, False),
    Status: ("status", 1, True),
    Stats: ("stats", 0, False),
}
DURABLE = {Alert: ALERT, TransactionSummary: SUMMARY}
INFLIGHT_MAX = PAHO_QUEUE_MAX - 100  # outbox rows handed to paho and not yet acknowledged; the rest of paho's queue is for the others
PUMP_PERIOD_S = 1.0  # the publisher thread's turn when nothing wakes it
EARLY_ACK_KEEP_S = 60.0  # acks of untracked messages (status, stats) are forgotten after this
FAULT_LOG_EVERY_S = 60.0  # a pump turn that keeps failing is logged once a minute
NOT_DURABLE_KEPT = 4096  # recent event ids sent without a durable copy, for the POS answers


class Publisher:
    def __init__(
        self,
        settings: Settings,
        transport: MqttTransport,
        *,
        outbox: Outbox | None,
        model_ref: Callable[[], ModelRef | None],
        camera_state: Callable[[], str | None],
        online_fields: Callable[[], dict] = dict,
    ):
        self.settings = settings
        self.transport = transport
        self.outbox = outbox
        self.base = settings.topic_base
        self.model_ref = model_ref
        self.camera_state = camera_state
        # The daemon's fields of an ``online`` status (thresholds, model_validation, last_model_rejection),
        # read at each announcement, so a reconnect announces what holds then.
        self.online_fields = online_fields
        self.outbox_failures = 0
        self.outbox_failing = False  # the last store failed: the status says so until one succeeds again
        # The last store that tells whether an alert would fit failed. Not outbox_failing: a summary
        # refused to keep the released reserve for alerts (KeptForAlerts) says nothing about alerts,
        # which are still stored on disk then, and the status must not call them in-memory only.
        self.alerts_failing = False
        self._lock = threading.Lock()
        self._inflight: dict[int, int] = {}  # message id -> outbox row, handed over and not acknowledged
        self._sent_rows: set[int] = set()  # rows handed over whose delete is not done yet (acknowledged or not)
        self._acked: list[int] = []  # acknowledged rows waiting for the publisher thread to delete them
        self._handed_up_to = 0  # the newest row handed over: the next turn reads the rows after it
        self._early_acks: dict[int, float] = {}  # PUBACKs that beat the bookkeeping, by message id
        self._in_memory: dict[int, str] = {}  # message id -> event_id of an event with no durable copy
        self._not_durable: OrderedDict[str, None] = OrderedDict()  # recent such event ids, for POS answers
        self._wake = threading.Event()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="publisher", daemon=True)
        suffix, qos, retain = TOPIC_BY_TYPE[Status]
        transport.set_will(f"{self.base}/{suffix}", self._status("offline").to_json(), qos, retain)
        transport.on_ack = self._on_ack
        transport.when_connected(self._on_connected)

    # --- life cycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Wait up to timeout_s for the broker to have what is pending, publish ``stopped``
        (retained), disconnect. What the broker has not acknowledged by then stays in the
        outbox for the next start."""
        self.transport.closing()
        deadline = time.monotonic() + timeout_s
        self._wake.set()
        while self.transport.connected.is_set() and self._unacknowledged() and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.transport.connected.is_set():
            suffix, qos, retain = TOPIC_BY_TYPE[Status]
            self.transport.publish_and_wait(f"{self.base}/{suffix}", self._status("stopped").to_json(), qos, retain,
                                            timeout_s=max(0.5, deadline - time.monotonic()))
        self.transport.stop()
        self._closed = True
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def _unacknowledged(self) -> bool:
        if self.pending_in_memory:
            return True
        return self.outbox is not None and not self.outbox.broken and len(self.outbox) > 0

    # --- publishing ------------------------------------------------------------------------------

    def publish(self, event: Event) -> None:
        """Send one event to its topic; never waits for the broker. Alerts and summaries are
        stored in the outbox first and sent by the publisher thread."""
        suffix, qos, retain = TOPIC_BY_TYPE[type(event)]
        topic, payload = f"{self.base}/{suffix}", event.to_json()
        priority = DURABLE.get(type(event))
        if priority is None:
            self._hand_over(topic, payload, qos, retain)
            return
        if self.outbox is None:
            self._send_from_memory(str(event.event_id), topic, payload, qos, retain)
            return
        try:
            self.outbox.add(str(event.event_id), priority, topic, payload, qos, retain)
        except OutboxError as exc:
            # Cannot store it: still send it live, and say so loudly.
            self.outbox_failures += 1
            self.outbox_failing = True
            self.alerts_failing = self.alerts_failing or not isinstance(exc, KeptForAlerts)
            log.error("%s; publishing %s live without a durable copy", exc, event.event_id)
            self._send_from_memory(str(event.event_id), topic, payload, qos, retain)
            return
        self.outbox_failing = self.alerts_failing = False
        self._wake.set()

    def publish_status(self) -> None:
        """Re-announce ``online`` (retained), e.g. after the model changed or a bundle was refused.

        While the broker is away nothing is sent: the next connection announces the same status."""
        if self.transport.connected.is_set():
            self._announce_online()

    @property
    def inflight(self) -> int:
        """Outbox rows handed to the transport whose delete is not done yet."""
        with self._lock:
            return len(self._sent_rows)

    @property
    def pending_in_memory(self) -> int:
        """Alerts and summaries with no durable copy that the broker has not acknowledged yet."""
        with self._lock:
            return len(self._in_memory)

    def durable(self, event_id: str) -> bool:
        """False for a recent event that was published without a durable copy."""
        with self._lock:
            return event_id not in self._not_durable

    # --- sending -------------------------------------------------------------------------------------

    def _hand_over(self, topic: str, payload: bytes, qos: int, retain: bool, lost: str = "") -> int | None:
        """The transport's message id, or None (logged) if paho refused the message."""
        try:
            return self.transport.publish(topic, payload, qos, retain)
        except PublishError as exc:
            log.error("%s%s", exc, lost)
            return None

    def _send_from_memory(self, event_id: str, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        with self._lock:
            self._not_durable[event_id] = None
            while len(self._not_durable) > NOT_DURABLE_KEPT:
                self._not_durable.popitem(last=False)
        mid = self._hand_over(topic, payload, qos, retain,
                              f"; event {event_id} is LOST (no durable copy, memory queue full)")
        if mid is not None:
            with self._lock:
                if self._early_acks.pop(mid, None) is None:
                    self._in_memory[mid] = event_id

    def _announce_online(self) -> None:
        suffix, qos, retain = TOPIC_BY_TYPE[Status]
        self._hand_over(f"{self.base}/{suffix}", self._status("online").to_json(), qos, retain)

    def _status(self, state: str) -> Status:
        s = self.settings
        return Status(
            store_id=s.store_id,
            till_id=s.till_id,
            model=self.model_ref(),
            state=state,  # type: ignore[arg-type]
            camera_state=self.camera_state(),  # type: ignore[arg-type]
            version=__version__,
            **(self.online_fields() if state == "online" else {}),
        )

    # --- the transport's callbacks (paho's network thread) -----------------------------------------------

    def _on_connected(self) -> None:
        self._announce_online()
        self._wake.set()

    def _on_ack(self, mid: int) -> None:
        with self._lock:
            row = self._inflight.pop(mid, None)
            if row is None:
                if self._in_memory.pop(mid, None) is None:
                    self._early_acks[mid] = time.monotonic()
                return
            self._acked.append(row)
        self._wake.set()

    # --- the publisher thread ---------------------------------------------------------------------------

    def _run(self) -> None:
        failed_at = -FAULT_LOG_EVERY_S
        while not self._closed:
            self._wake.wait(PUMP_PERIOD_S)
            self._wake.clear()  # before the turn: a wake during it makes another turn
            if self._closed:
                return
            try:
                self._pump()
            except Exception:  # the thread must outlive any one failure: stored events wait for the next turn
                now = time.monotonic()
                if now - failed_at >= FAULT_LOG_EVERY_S:
                    failed_at = now
                    log.exception("handing stored events to the MQTT transport failed; retrying")

    def _pump(self) -> int:
        """One turn: delete acknowledged rows, then hand the next stored rows to the transport,
        oldest first; returns how many were handed over. Only the publisher thread calls it, so
        a row is handed over once (paho re-sends what it holds across reconnects itself)."""
        now = time.monotonic()
        with self._lock:
            acked, self._acked = self._acked, []
            for mid in [m for m, t in self._early_acks.items() if now - t > EARLY_ACK_KEEP_S]:
                del self._early_acks[mid]  # acks of status/stats messages, which are not tracked
        if self.outbox is None:
            return 0
        if acked:
            self.outbox.acknowledged(*acked)
            with self._lock:
                self._sent_rows.difference_update(acked)
        if not self.transport.connected.is_set():
            return 0
        room = INFLIGHT_MAX - self.inflight
        if room <= 0:
            return 0
        sent = 0
        for p in self.outbox.pending(after=self._handed_up_to, limit=room):
            mid = self._hand_over(p.topic, p.payload, p.qos, p.retain, "; kept in the outbox")
            if mid is None:
                break  # paho is full: this row and those after it go in a later turn, still oldest first
            self._handed_up_to = p.row_id
            sent += 1
            with self._lock:
                self._sent_rows.add(p.row_id)
                if self._early_acks.pop(mid, None) is None:
                    self._inflight[mid] = p.row_id
                else:
                    self._acked.append(p.row_id)
                    self._wake.set()
        return sent
