"""The real parts that the tests, the benchmarks and ``make demo`` start around the till.

One definition of each: a free loopback port (:mod:`.net`), the demo and test videos of a real
face (:mod:`.videos`), Mosquitto and the pure-Python amqtt broker (:mod:`.brokers`), a throwaway
PostgreSQL (:mod:`.postgres`), ``agegate-edge run`` (:mod:`.daemon`) and ``agegate-backend ingest``
(:mod:`.backend`) as processes, an independent MQTT subscriber and publisher (:mod:`.mqtt`) and the
headless Chromium (:mod:`.browser`).

Never imported by the till: no module of ``agegate.edge`` but the demo uses it, and what it needs
beyond the ``edge`` extra (httpx, scikit-image, amqtt, psycopg, Playwright) comes with ``dev``
(tests/test_packaging.py checks both).
"""
