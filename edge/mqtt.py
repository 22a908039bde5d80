"""The daemon's MQTT link: the one place that publishes, and the listener for POS messages.

Topics, under ``base = {prefix}/{store}/{till}``:

- ``base/alerts``        Alert, QoS 1
- ``base/transactions``  TransactionSummary, QoS 1
- ``base/status``        Status, QoS 1, retained; ``offline`` is registered as the last will
- ``base/stats``         Stats, QoS 0
- ``base/pos``           subscribed: POS messages, for stores whose POS speaks MQTT

Delivery of alerts and summaries is at-least-once, through the durable outbox: each event
is stored (outbox.py) before it is handed to paho, and its row is deleted when the broker's
PUBACK arrives. paho keeps unacknowledged QoS 1 messages across reconnects and re-sends them;
rows it never got (a restart, a full in-flight window) are re-sent oldest first by
:meth:`MqttLink.pump`, which runs on every connect and once a second.

An alert or summary that the outbox cannot take (state disk full or unusable) is still sent,
from memory: paho's queue (bounded, kept across reconnects) holds it until the broker's
PUBACK, and :attr:`MqttLink.pending_in_memory` counts such events, so the status never says
nothing is pending while they are only in RAM; :meth:`MqttLink.durable` tells the POS answer.

Threading: paho runs its network loop in its own thread (``loop_start``); ``publish`` may be
called from any thread. Our lock guards only the in-flight bookkeeping and is never held
while calling into paho, whose PUBACK callback runs under paho's own lock. Incoming POS messages are handed to a bounded queue served by one
worker thread, because deciding may wait for a face and must not stall the network loop.
"""

from __future__ import annotations

import logging
import queue
import socket
from collections import OrderedDict
import ssl
import threading
import time
from typing import Callable

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from .. import __version__
from .config import Settings
from .events import Alert, Event, ModelRef, PosMessage, Stats, Status, TransactionSummary
from .outbox import ALERT, SUMMARY, Outbox, OutboxError
from .pydantic_errors import first_error

log = logging.getLogger(__name__)

TOPIC_BY_TYPE: dict[type[Event], tuple[str, int, bool]] = {
    Alert: ("alerts", 1, False),
    TransactionSummary: ("transactions", 1, False),
    Status: ("status", 1, True),
    Stats: ("stats", 0, False),
}
POS_QUEUE_MAX = 256
INFLIGHT_MAX = 500  # outbox rows handed to paho and not yet acknowledged
DURABLE = {Alert: ALERT, TransactionSummary: SUMMARY}


class MqttLink:
    def __init__(
        self,
        settings: Settings,
        *,
        on_pos: Callable[[PosMessage], object],
        on_pos_rejected: Callable[[str], None],
        model_ref: Callable[[], ModelRef | None],
        camera_state: Callable[[], str | None],
        outbox: Outbox | None = None,
        model_quality: Callable[[], dict] = dict,
    ):
        self.settings = settings
        self.outbox = outbox
        self.base = settings.topic_base
        self.on_pos = on_pos
        self.on_pos_rejected = on_pos_rejected
        self.model_ref = model_ref
        self.camera_state = camera_state
        self.model_quality = model_quality  # the status fields on the model in service: thresholds, model_validation
        self.connected = threading.Event()
        self.last_model_rejection: str | None = None  # kept so a reconnect re-announces it too
        self._link_state: str | None = None  # what was last logged about the broker link: logged once per change
        self._stopping = False
        self.failures = 0
        self.outbox_failures = 0
        self._lock = threading.Lock()
        self._inflight: dict[int, int] = {}  # paho mid -> outbox row
        self._sent_rows: set[int] = set()
        self._early_acks: dict[int, float] = {}  # PUBACKs that beat the bookkeeping, by mid
        self._in_memory: dict[int, str] = {}  # paho mid -> event_id of an event with no durable copy
        self._not_durable: OrderedDict[str, None] = OrderedDict()  # recent such event ids, for POS answers
        self._pos_queue: queue.Queue[PosMessage | None] = queue.Queue(maxsize=POS_QUEUE_MAX)
        self._pos_worker = threading.Thread(target=self._serve_pos, name="mqtt-pos", daemon=True)
        self._client = self._make_client()

    # --- life cycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Connect in the background: a broker that is down at start-up is retried, not fatal."""
        s = self.settings
        self._pos_worker.start()
        self._client.connect_async(s.mqtt_host, s.mqtt_port, keepalive=s.mqtt_keepalive_s)
        self._client.loop_start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Publish ``stopped`` (retained), wait up to timeout_s for pending messages, disconnect.

        What the broker has not acknowledged by then stays in the outbox for the next start.
        """
        self._stopping = True
        deadline = time.monotonic() + timeout_s
        while self.connected.is_set() and self.inflight and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.connected.is_set():
            info = self._client.publish(f"{self.base}/status", self._status("stopped").to_json(), qos=1, retain=True)
            try:
                info.wait_for_publish(timeout=max(0.5, deadline - time.monotonic()))
            except (RuntimeError, ValueError) as exc:
                log.warning("could not publish the stopped status: %s", exc)
        self._client.disconnect()
        self._client.loop_stop()
        self._pos_queue.put(None)

    # --- publishing ------------------------------------------------------------------------------

    def publish(self, event: Event) -> None:
        """Send one event to its topic; never blocks. Alerts and summaries go through the outbox."""
        suffix, qos, retain = TOPIC_BY_TYPE[type(event)]
        topic, payload = f"{self.base}/{suffix}", event.to_json()
        priority = DURABLE.get(type(event))
        if priority is None or self.outbox is None:
            self._send(topic, payload, qos, retain, in_memory=str(event.event_id) if priority is not None else None)
            return
        try:
            row = self.outbox.add(str(event.event_id), priority, topic, payload, qos, retain)
        except OutboxError as exc:
            # Cannot store it: still send it live, and say so loudly.
            self.outbox_failures += 1
            log.error("%s; publishing %s live without a durable copy", exc, event.event_id)
            self._send(topic, payload, qos, retain, in_memory=str(event.event_id))
            return
        if self.inflight < INFLIGHT_MAX:
            self._send(topic, payload, qos, retain, row)

    def pump(self) -> int:
        """Hand stored events that paho does not hold yet to paho, oldest first; returns how many."""
        if self.outbox is None or not self.connected.is_set():
            return 0
        now = time.monotonic()
        with self._lock:
            for mid in [m for m, t in self._early_acks.items() if now - t > 60]:
                del self._early_acks[mid]  # acks of status/stats messages, which are not tracked
            exclude = set(self._sent_rows)
        room = INFLIGHT_MAX - len(exclude)
        sent = 0
        for p in self.outbox.pending(exclude=exclude, limit=max(0, room)):
            if self._send(p.topic, p.payload, p.qos, p.retain, p.row_id):
                sent += 1
        return sent

    @property
    def inflight(self) -> int:
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

    def _send(self, topic: str, payload: bytes, qos: int, retain: bool, row: int | None = None,
              in_memory: str | None = None) -> bool:
        if in_memory is not None:
            with self._lock:
                self._not_durable[in_memory] = None
                while len(self._not_durable) > 4096:
                    self._not_durable.popitem(last=False)
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc not in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_NO_CONN):
            self.failures += 1
            log.error("publishing to %s failed: %s%s", topic, paho.error_string(info.rc),
                      "; kept in the outbox" if row is not None else
                      f"; event {in_memory} is LOST (no durable copy, memory queue full)" if in_memory else "")
            return False
        if in_memory is not None:
            with self._lock:
                if self._early_acks.pop(info.mid, None) is None:
                    self._in_memory[info.mid] = in_memory
        if row is not None:
            with self._lock:
                acked = self._early_acks.pop(info.mid, None) is not None
                if not acked:
                    self._inflight[info.mid] = row
                    self._sent_rows.add(row)
            if acked and self.outbox is not None:
                self.outbox.acknowledged(row)
        return True

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        with self._lock:
            row = self._inflight.pop(mid, None)
            if row is None:
                if self._in_memory.pop(mid, None) is None:
                    self._early_acks[mid] = time.monotonic()
                return
            self._sent_rows.discard(row)
        if self.outbox is not None:
            self.outbox.acknowledged(row)

    def publish_status(self, last_model_rejection: str | None = None) -> None:
        """Re-announce ``online`` (retained), e.g. after the model changed or a bundle was refused.

        While the broker is away nothing is sent: the next connection announces the same status."""
        if last_model_rejection is not None:
            self.last_model_rejection = last_model_rejection
        if self.connected.is_set():
            self._send(f"{self.base}/status", self._status("online").to_json(), 1, True)

    def _status(self, state: str) -> Status:
        s = self.settings
        return Status(
            store_id=s.store_id,
            till_id=s.till_id,
            model=self.model_ref(),
            state=state,  # type: ignore[arg-type]
            camera_state=self.camera_state(),  # type: ignore[arg-type]
            version=__version__,
            **(self.model_quality() if state == "online" else {}),
            **({"last_model_rejection": self.last_model_rejection} if state == "online" else {}),
        )

    # --- paho plumbing -----------------------------------------------------------------------------

    def _make_client(self) -> "AgegateClient":
        client = make_client(self.settings)
        will = self._status("offline")
        client.will_set(f"{self.base}/status", will.to_json(), qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.message_callback_add(f"{self.base}/pos", self._on_pos_message)
        return client

    def _log_link(self, state: str, level: int = logging.WARNING) -> None:
        """Log the broker link's state when it changed: a retry every second must not flood the journal."""
        if state != self._link_state:
            self._link_state = state
            log.log(level, "MQTT broker %s:%s: %s", self.settings.mqtt_host, self.settings.mqtt_port, state)

    def _on_connect_fail(self, client: "AgegateClient", userdata) -> None:
        kind, text = describe_connect_error(client.last_connect_error, client.connect_timeout)
        self._log_link(f"unreachable ({kind}): {text}; retrying")

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            kind, text = describe_refusal(reason_code)
            self._log_link(f"refused the connection ({kind}): {text}; retrying", logging.ERROR)
            return
        self._log_link("connected", logging.INFO)
        client.subscribe(f"{self.base}/pos", qos=1)
        self._send(f"{self.base}/status", self._status("online").to_json(), 1, True)
        self.connected.set()
        threading.Thread(target=self.pump, name="mqtt-pump", daemon=True).start()  # not on paho's thread

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        if self.connected.is_set() and not self._stopping:
            # paho reports a dropped socket as "Unspecified error"; the socket error it logged says more.
            reason = str(reason_code) if reason_code.value != 128 else (
                client.last_socket_error or "the broker closed the connection")
            self._log_link(f"connection lost: {reason}; reconnecting")
        self.connected.clear()

    def _on_pos_message(self, client, userdata, message: paho.MQTTMessage) -> None:
        if len(message.payload) > self.settings.http_max_body:
            self.on_pos_rejected(f"MQTT POS message of {len(message.payload)} bytes exceeds {self.settings.http_max_body}")
            return
        try:
            msg = PosMessage.model_validate_json(message.payload)
        except ValueError as exc:
            self.on_pos_rejected(f"MQTT POS message rejected: {first_error(exc)}")
            return
        try:
            self._pos_queue.put_nowait(msg)
        except queue.Full:
            self.on_pos_rejected(f"MQTT POS queue full ({POS_QUEUE_MAX}): dropped {msg.type} for {msg.transaction_id}")

    def _serve_pos(self) -> None:
        while (msg := self._pos_queue.get()) is not None:
            try:
                self.on_pos(msg)
            except Exception:  # one bad message must not end the worker
                log.exception("handling MQTT POS message %s failed", msg.type)


class AgegateClient(paho.Client):
    """paho's client, keeping why the last connection attempt failed: paho passes its on_connect_fail
    callback no reason, and logs a dropped socket's error only to on_log."""

    last_connect_error: OSError | None = None
    last_socket_error: str | None = None
    _in_tls_handshake = False

    def reconnect(self):
        self._in_tls_handshake = False
        try:
            result = super().reconnect()
        except OSError as exc:
            # A broker that resets or never answers a handshake fails it with a plain socket error.
            self.last_connect_error = ssl.SSLError(f"{type(exc).__name__}: {exc.strerror or exc}") \
                if self._in_tls_handshake and not isinstance(exc, ssl.SSLError) else exc
            raise
        self.last_connect_error = self.last_socket_error = None
        return result

    def _ssl_wrap_socket(self, tcp_sock):  # paho's step from TCP to TLS: failures after it are TLS's
        self._in_tls_handshake = True
        return super()._ssl_wrap_socket(tcp_sock)


def _keep_socket_errors(client: AgegateClient, userdata, level: int, text: str) -> None:
    if level == paho.MQTT_LOG_ERR and "socket" in text:  # "failed to receive on socket: [Errno 104] …"
        client.last_socket_error = text


def describe_connect_error(exc: BaseException | None, timeout_s: float) -> tuple[str, str]:
    """(kind, text) for a failed connection attempt: kind is one of dns, refused, timeout, tls, network."""
    if isinstance(exc, socket.gaierror):
        return "dns", f"the host name does not resolve ({exc.strerror or exc})"
    if isinstance(exc, ConnectionRefusedError):
        return "refused", "connection refused: nothing listens on that port"
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return "timeout", f"no answer to the TCP connection within {timeout_s:g} s"
    if isinstance(exc, ssl.SSLError):
        return "tls", f"TLS handshake failed: {getattr(exc, 'verify_message', None) or getattr(exc, 'reason', None) or exc}"
    if isinstance(exc, OSError):
        return "network", exc.strerror or str(exc)
    return "network", "connection failed"


def describe_refusal(reason_code) -> tuple[str, str]:
    """(kind, text) for a CONNACK refusal: auth for credentials, broker otherwise."""
    auth = {"Not authorized", "Bad user name or password", "Client identifier not valid", "Bad authentication method"}
    return ("auth" if str(reason_code) in auth else "broker"), str(reason_code)


def make_client(settings: Settings, client_id_suffix: str = "") -> AgegateClient:
    """A paho client with this till's identity, credentials and TLS; no callbacks set but the
    error keeping of :class:`AgegateClient`."""
    s = settings
    client_id = (s.mqtt_client_id or f"agegate-{s.store_id}-{s.till_id}") + client_id_suffix
    client = AgegateClient(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
    client.on_log = _keep_socket_errors
    client.max_queued_messages_set(INFLIGHT_MAX + 100)  # the outbox holds the rest, on disk
    client.reconnect_delay_set(min_delay=1, max_delay=10)
    if s.mqtt_username:
        client.username_pw_set(s.mqtt_username, s.mqtt_password.get_secret_value() if s.mqtt_password else None)
    if s.mqtt_tls or s.mqtt_ca_file:
        client.tls_set(
            ca_certs=str(s.mqtt_ca_file) if s.mqtt_ca_file else None,
            certfile=str(s.mqtt_cert_file) if s.mqtt_cert_file else None,
            keyfile=str(s.mqtt_key_file) if s.mqtt_key_file else None,
            cert_reqs=ssl.CERT_REQUIRED,
            tls_version=ssl.PROTOCOL_TLS_CLIENT,
        )
    return client

