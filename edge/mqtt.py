"""The MQTT transport: the till's one paho client, and nothing above it.

It knows the broker (host, port, credentials, TLS), the last will, connecting and
reconnecting in the background (each change of the link logged once, with why), and
sending bytes: :meth:`MqttTransport.publish` hands one message to paho and returns its
message id; the broker's acknowledgements are passed to :attr:`MqttTransport.on_ack` by that
id. What to send, and when, is the publisher's (publisher.py); what arrives on a subscribed
topic goes to whoever subscribed (pos_mqtt.py, the MQTT POS adapter).

Threading: paho runs its network loop in its own thread (``loop_start``); the connect, ack
and message callbacks run on it, so they must not block: the publisher's ack callback only
records the ack and wakes its own thread, the POS adapter only queues the message.
``publish`` may be called from any thread. Nothing here holds a lock of ours while calling
into paho.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from typing import Callable

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from .config import Settings

log = logging.getLogger(__name__)

PAHO_QUEUE_MAX = 600  # messages paho holds unacknowledged; the publisher keeps its share below this, the outbox holds the rest


class PublishError(Exception):
    """paho refused a message (its queue is full, the client is closing); the message says why."""


class MqttTransport:
    def __init__(self, settings: Settings, client_id_suffix: str = ""):
        self.settings = settings
        self.connected = threading.Event()
        self.failures = 0  # messages paho refused
        self.on_ack: Callable[[int], None] = lambda mid: None  # the broker has message mid (QoS 1), or paho sent it (QoS 0)
        self._on_connected: list[Callable[[], None]] = []
        self._subscriptions: dict[str, int] = {}
        self._link_state: str | None = None  # what was last logged about the broker link: logged once per change
        self._stopping = False
        self._client = make_client(settings, client_id_suffix)
        self._client.on_connect = self._on_connect
        self._client.on_connect_fail = self._on_connect_fail
        self._client.on_disconnect = self._on_disconnect
        self._client.on_publish = self._on_publish

    # --- set up, before start() ---------------------------------------------------------------

    def set_will(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        self._client.will_set(topic, payload, qos=qos, retain=retain)

    def subscribe(self, topic: str, qos: int, on_message: Callable[[bytes], None]) -> None:
        """Subscribe on every connection; on_message gets each payload, on paho's thread."""
        self._subscriptions[topic] = qos
        self._client.message_callback_add(topic, lambda client, userdata, message: on_message(message.payload))

    def when_connected(self, callback: Callable[[], None]) -> None:
        """Call callback (on paho's thread) after every successful connection, once ``connected`` is set."""
        self._on_connected.append(callback)

    # --- life cycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Connect in the background: a broker that is down at start-up is retried, not fatal."""
        s = self.settings
        self._client.connect_async(s.mqtt_host, s.mqtt_port, keepalive=s.mqtt_keepalive_s)
        self._client.loop_start()

    def closing(self) -> None:
        """We are about to disconnect: a drop from now on is ours, not news for the log."""
        self._stopping = True

    def stop(self) -> None:
        self._stopping = True
        self._client.disconnect()
        self._client.loop_stop()

    # --- sending --------------------------------------------------------------------------------

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> int:
        """Hand one message to paho; returns its message id. Never blocks. While the broker is
        away paho keeps the message and sends it on reconnect; raises PublishError if it refuses."""
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc not in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_NO_CONN):
            self.failures += 1
            raise PublishError(f"publishing to {topic} failed: {paho.error_string(info.rc)}")
        return info.mid

    def publish_and_wait(self, topic: str, payload: bytes, qos: int, retain: bool, timeout_s: float) -> None:
        """Publish and wait up to timeout_s for the broker to have it (the last words before a disconnect)."""
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        try:
            info.wait_for_publish(timeout=timeout_s)
        except (RuntimeError, ValueError) as exc:
            log.warning("could not publish to %s: %s", topic, exc)

    # --- paho's callbacks (its network thread) ----------------------------------------------------

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
        for topic, qos in self._subscriptions.items():
            client.subscribe(topic, qos=qos)
        self.connected.set()
        for callback in self._on_connected:
            try:
                callback()
            except Exception:  # one failing listener must not stop the others, nor paho's loop
                log.exception("handling the MQTT connection failed")

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        if self.connected.is_set() and not self._stopping:
            # paho reports a dropped socket as "Unspecified error"; the socket error it logged says more.
            reason = str(reason_code) if reason_code.value != 128 else (
                client.last_socket_error or "the broker closed the connection")
            self._log_link(f"connection lost: {reason}; reconnecting")
        self.connected.clear()

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        self.on_ack(mid)


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
    client.max_queued_messages_set(PAHO_QUEUE_MAX)  # the outbox holds the rest, on disk
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
