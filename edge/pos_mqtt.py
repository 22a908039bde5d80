"""The MQTT POS adapter, beside the HTTP one (api.py): POS messages on ``base/pos``.

For stores whose POS speaks MQTT: each message is a :class:`PosMessage` as JSON, the same
body as ``POST /v1/pos``. Nothing is answered over MQTT: the decision reaches the store as
the alert on ``base/alerts``. A message over AGEGATE_HTTP_MAX_BODY, one that is not a valid
PosMessage, or one that finds the queue full is rejected (counted and logged by
``on_rejected``) and the rest go on.

Threading: messages arrive on paho's network thread (mqtt.py), which must not wait for a
decision (deciding may wait for a face), so they are put on a bounded queue
(:data:`POS_QUEUE_MAX`) served by one worker thread, ``mqtt-pos``, which calls ``on_pos``.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Callable

from .events import PosMessage
from .mqtt import MqttTransport
from .pydantic_errors import first_error

log = logging.getLogger(__name__)

POS_QUEUE_MAX = 256


class MqttPosListener:
    def __init__(self, transport: MqttTransport, topic: str, *, on_pos: Callable[[PosMessage], object],
                 on_rejected: Callable[[str], None], max_body: int):
        self.on_pos = on_pos
        self.on_rejected = on_rejected
        self.max_body = max_body
        self._queue: queue.Queue[PosMessage | None] = queue.Queue(maxsize=POS_QUEUE_MAX)
        self._worker = threading.Thread(target=self._serve, name="mqtt-pos", daemon=True)
        transport.subscribe(topic, 1, self._on_message)

    def start(self) -> None:
        self._worker.start()

    def stop(self) -> None:
        """Stop the worker after the message it is deciding (call once the transport has stopped)."""
        self._queue.put(None)

    def _on_message(self, payload: bytes) -> None:
        if len(payload) > self.max_body:
            self.on_rejected(f"MQTT POS message of {len(payload)} bytes exceeds {self.max_body}")
            return
        try:
            msg = PosMessage.model_validate_json(payload)
        except ValueError as exc:
            self.on_rejected(f"MQTT POS message rejected: {first_error(exc)}")
            return
        try:
            self._queue.put_nowait(msg)
        except queue.Full:
            self.on_rejected(f"MQTT POS queue full ({POS_QUEUE_MAX}): dropped {msg.type} for {msg.transaction_id}")

    def _serve(self) -> None:
        while (msg := self._queue.get()) is not None:
            try:
                self.on_pos(msg)
            except Exception:  # one bad message must not end the worker
                log.exception("handling MQTT POS message %s failed", msg.type)

