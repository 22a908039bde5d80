"""``agegate-backend ingest``: the tills' events from one or more brokers into the database.

Each broker gets one MQTT client with a persistent session (``clean_session=False``, a stable
client id, QoS 1 subscriptions), so events published while the backend is down wait on the
broker. Messages are acknowledged by hand (paho's ``manual_ack``), and only once the batch
holding them is committed: a crash or a database outage between receipt and commit leaves
them unacknowledged, and the broker delivers them again. Duplicates that this (or a till's
outbox) produces are dropped by ``event_id`` in :func:`agegate.backend.db.write`.

A payload that does not validate against the till's event models (agegate.edge.events: the
models docs/schemas/ is generated from), or whose topic names another store or till than its
body, is logged with its reason, counted, kept in the ``rejected`` table and acknowledged:
redelivering it would not make it valid.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable

import paho.mqtt.client as mqtt
from pydantic import BaseModel, ValidationError
from sqlalchemy.engine import Engine

from agegate.edge.events import Alert, Status, TransactionSummary

from . import db

log = logging.getLogger(__name__)

# The topic suffixes ingested and the one payload model each must hold.
KINDS: dict[str, type[BaseModel]] = {"alerts": Alert, "transactions": TransactionSummary, "status": Status}


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int = 1883

    @classmethod
    def parse(cls, text: str) -> "BrokerAddress":
        host, _, port = text.rpartition(":") if ":" in text else (text, "", "")
        return cls(host or text, int(port) if port else 1883)

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass
class _Received:
    broker: str
    client: mqtt.Client
    message: mqtt.MQTTMessage
    at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))  # arrival order, to the microsecond


def validate(prefix: str, topic: str, payload: bytes) -> tuple[BaseModel | None, str | None]:
    """The event in ``payload``, or None and why it is refused."""
    parts = topic.split("/")
    base = prefix.split("/")
    if len(parts) != len(base) + 3 or parts[: len(base)] != base or parts[-1] not in KINDS:
        return None, f"unexpected topic {topic!r} (want {prefix}/<store>/<till>/alerts|transactions|status)"
    store_id, till_id, kind = parts[-3:]
    if not payload:
        return None, "empty payload"
    try:
        event = KINDS[kind].model_validate_json(payload)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'payload'}: {e['msg']}" for e in exc.errors()[:5])
        more = f" (+{exc.error_count() - 5} more)" if exc.error_count() > 5 else ""
        return None, f"not a valid {KINDS[kind].__name__}: {problems}{more}"
    if (event.store_id, event.till_id) != (store_id, till_id):  # type: ignore[attr-defined]
        return None, (f"topic names store {store_id!r} till {till_id!r} but the payload says "
                      f"store {event.store_id!r} till {event.till_id!r}")  # type: ignore[attr-defined]
    return event, None


class Ingester:
    """Subscribe to ``brokers``, write what arrives to ``engine``; :meth:`start`, then :meth:`stop`."""

    def __init__(self, engine: Engine, brokers: list[BrokerAddress], *, prefix: str = "agegate",
                 client_id: str = "agegate-backend", username: str | None = None, password: str | None = None,
                 ca_file: str | None = None, share: str | None = None, batch_size: int = 500, batch_wait_s: float = 0.05,
                 on_batch: Callable[[db.Written], None] | None = None):
        self.engine, self.brokers, self.prefix, self.client_id = engine, brokers, prefix.rstrip("/"), client_id
        self.username, self.password, self.ca_file = username, password, ca_file
        # A shared subscription ($share/<group>/...): the broker spreads the events over every ingester
        # of the group, for a chain whose event rate one process cannot take (docs/deploy.md).
        self.share = share
        self.batch_size, self.batch_wait_s, self.on_batch = batch_size, batch_wait_s, on_batch
        self.counts: Counter[str] = Counter()  # new, duplicates, rejected, db_errors
        self._inbox: queue.Queue[_Received] = queue.Queue()
        self._clients: list[mqtt.Client] = []
        self._stop = threading.Event()
        self._writer = threading.Thread(target=self._write_loop, name="ingest-writer", daemon=True)

    # --- MQTT ---------------------------------------------------------------------------------

    def start(self) -> None:
        self._writer.start()
        for address in self.brokers:
            client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id, clean_session=False,
                                 protocol=mqtt.MQTTv311, manual_ack=True)
            if self.username:
                client.username_pw_set(self.username, self.password)
            if self.ca_file:
                client.tls_set(ca_certs=self.ca_file)
            client.reconnect_delay_set(min_delay=1, max_delay=10)
            client.on_connect = self._on_connect
            client.on_disconnect = self._on_disconnect
            client.on_message = self._on_message
            client.user_data_set(str(address))
            client.connect_async(address.host, address.port, keepalive=30)
            client.loop_start()
            self._clients.append(client)

    def _on_connect(self, client, broker, flags, reason_code, properties) -> None:  # noqa: ANN001
        if reason_code.is_failure:
            log.error("broker %s refused the connection: %s", broker, reason_code)
            return
        log.info("connected to %s (session %s)", broker, "resumed" if flags.session_present else "new")
        shared = f"$share/{self.share}/" if self.share else ""
        client.subscribe([(f"{shared}{self.prefix}/+/+/{kind}", 1) for kind in KINDS])

    def _on_disconnect(self, client, broker, flags, reason_code, properties) -> None:  # noqa: ANN001
        if not self._stop.is_set():
            log.warning("lost broker %s (%s): reconnecting; the session keeps what it publishes meanwhile",
                        broker, reason_code)

    def _on_message(self, client, broker, message) -> None:  # noqa: ANN001
        self._inbox.put(_Received(broker, client, message))

    # --- the database -------------------------------------------------------------------------

    def _next_batch(self) -> list[_Received]:
        try:
            batch = [self._inbox.get(timeout=0.2)]
        except queue.Empty:
            return []
        deadline = time.monotonic() + self.batch_wait_s
        while len(batch) < self.batch_size:
            try:
                batch.append(self._inbox.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                break
        return batch

    def _write_loop(self) -> None:
        while not self._stop.is_set() or not self._inbox.empty():
            batch = self._next_batch()
            if not batch:
                continue
            events, bad, arrived = [], [], {}
            for received in batch:
                m = received.message
                try:
                    event, reason = validate(self.prefix, m.topic, m.payload)
                except Exception as exc:  # noqa: BLE001  whatever a payload does, it must not stop the writer
                    event, reason = None, f"cannot be read: {exc!r}"
                if event is None:
                    log.warning("rejected a payload from %s on %s: %s", received.broker, m.topic, reason)
                    bad.append((received.broker, m.topic, m.payload, reason))
                else:
                    events.append(event)
                    arrived.setdefault(str(event.event_id), received.at)
            delay = 0.5
            while True:
                try:
                    with self.engine.begin() as conn:
                        written = db.write(conn, events, bad, arrived=arrived)
                    break
                except Exception as exc:  # the database is away: keep the batch unacknowledged and retry
                    self.counts["db_errors"] += 1
                    log.error("cannot write %d events to the database (retrying in %.1f s): %s", len(batch), delay, exc)
                    if self._stop.wait(delay):
                        return  # unacknowledged: the broker sends them again to the next run
                    delay = min(delay * 2, 10.0)
            for received in batch:  # committed: now the broker may forget them
                received.client.ack(received.message.mid, received.message.qos)
            self.counts.update(new=written.new, duplicates=written.duplicates, rejected=written.rejected)
            if self.on_batch is not None:
                self.on_batch(written)

    def stop(self, timeout: float = 10.0) -> None:
        """Disconnect, and write what already arrived."""
        for client in self._clients:
            client.disconnect()
            client.loop_stop()
        self._stop.set()
        if self._writer.is_alive():
            self._writer.join(timeout)
