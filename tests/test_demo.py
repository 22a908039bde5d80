"""The demo's pieces: the pure-Python broker fallback carries real MQTT traffic."""

from __future__ import annotations

import json

import pytest

from agegate.testing.brokers import start_amqtt
from agegate.testing.mqtt import Subscriber, publish_once


@pytest.mark.network
def test_amqtt_fallback_broker_carries_messages():
    port, described, stop = start_amqtt()
    try:
        assert "amqtt" in described
        sub = Subscriber("127.0.0.1", port, "agegate/#")
        publish_once("127.0.0.1", port, "agegate/s/t/alerts", json.dumps({"type": "no_face"}))
        got = sub.wait_for(lambda m: [p for t, p in m if t == "agegate/s/t/alerts"], timeout=10)
        assert got == [{"type": "no_face"}]
        sub.close()
    finally:
        stop()
