"""An independent MQTT subscriber for the tests: what a store backend would receive."""

from __future__ import annotations

import json
import threading
import time
import uuid

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion


class Subscriber:
    def __init__(self, host: str, port: int, topic: str = "#", client_id: str | None = None, persistent: bool = False):
        """``persistent``: a durable session (clean_session False), as a backend that must not miss
        alerts while it or the broker restarts; needs a fixed ``client_id``."""
        self.messages: list[tuple[str, dict, bool]] = []
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
            raise RuntimeError("test subscriber could not subscribe")

    def _on_message(self, client, userdata, msg) -> None:
        try:
            payload = json.loads(msg.payload)
        except ValueError:
            payload = {"_raw": msg.payload.decode("utf-8", "replace")}
        with self._cond:
            self.messages.append((msg.topic, payload, bool(msg.retain)))
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

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def publish_once(host: str, port: int, topic: str, payload: bytes | str) -> None:
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"test-pub-{uuid.uuid4().hex[:8]}")
    c.connect(host, port)
    c.loop_start()
    c.publish(topic, payload, qos=1).wait_for_publish(10)
    c.disconnect()
    c.loop_stop()
