"""An independent MQTT subscriber and a QoS 1 publisher: what a store backend, or a till's link as
far as the broker can tell, would be."""

from __future__ import annotations

import json
import threading
import time
import uuid

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion


class Subscriber:
    """Subscribes to ``topic`` at QoS 1 and keeps every message as (topic, payload, retained), and when
    the first message of each transaction id arrived (time.perf_counter)."""

    def __init__(self, host: str, port: int, topic: str = "#", client_id: str | None = None, persistent: bool = False):
        """``persistent``: a durable session (clean_session False), as a backend that must not miss
        alerts while it or the broker restarts; needs a fixed ``client_id``."""
        self.messages: list[tuple[str, dict, bool]] = []
        self.arrived: dict[str, float] = {}
        self._cond = threading.Condition()
        self._client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id or f"test-sub-{uuid.uuid4().hex[:8]}",
                                   clean_session=not persistent)
        self._client.reconnect_delay_set(1, 2)
        self._client.on_message = self._on_message
        subscribed = threading.Event()
        self._client.on_subscribe = lambda *a: subscribed.set()
        self._client.on_connect = lambda c, *a: c.subscribe(topic, qos=1)
        self._client.connect(host, port)
        self._client.loop_start()
        if not subscribed.wait(10):
            raise RuntimeError("the MQTT subscriber could not subscribe")

    def _on_message(self, client, userdata, msg) -> None:
        now = time.perf_counter()
        try:
            payload = json.loads(msg.payload)
        except ValueError:
            payload = {"_raw": msg.payload.decode("utf-8", "replace")}
        with self._cond:
            self.messages.append((msg.topic, payload, bool(msg.retain)))
            if isinstance(payload, dict) and payload.get("transaction_id"):
                self.arrived.setdefault(payload["transaction_id"], now)
            self._cond.notify_all()

    def event_ids(self, suffix: str) -> list[str]:
        return [p["event_id"] for p in self.on(suffix)]

    def on(self, suffix: str) -> list[dict]:
        with self._cond:
            return [p for t, p, _ in self.messages if t.endswith("/" + suffix)]

    def wait_for(self, predicate, timeout: float = 15.0) -> list[dict]:
        """Wait until predicate(messages as (topic, payload)) returns a truthy value; return it."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = predicate([(t, p) for t, p, _ in self.messages])
                if found:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out; received: {[(t, p.get('type'), p.get('state')) for t, p, _ in self.messages]}")
                self._cond.wait(left)

    def arrival(self, transaction_id: str, timeout: float) -> float | None:
        """When the first message about ``transaction_id`` arrived (perf_counter), or None after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while transaction_id not in self.arrived:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)
            return self.arrived[transaction_id]

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


class Publisher:
    """A QoS 1 publisher that waits for each PUBACK."""

    def __init__(self, host: str, port: int, client_id: str | None = None):
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id or f"test-pub-{uuid.uuid4().hex[:8]}")
        self.client.connect(host, port)
        self.client.loop_start()

    def publish(self, topic: str, payload: bytes | str, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def publish_once(host: str, port: int, topic: str, payload: bytes | str) -> None:
    publisher = Publisher(host, port)
    try:
        publisher.publish(topic, payload)
    finally:
        publisher.close()
