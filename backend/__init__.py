"""agegate-backend: the consumer side of the tills' MQTT events, for a store or a chain.

``ingest`` subscribes (persistent session, QoS 1) to every till's alerts, transaction
summaries and status on one or more brokers, validates each payload with the till's own event
models (agegate.edge.events, which imports pydantic only), de-duplicates by ``event_id`` and
writes it to a database: SQLite by default, PostgreSQL by URL, its tables made by Alembic
migrations. ``serve`` answers the questions a category manager and a store manager ask, as
a server-rendered page and a JSON API. Nothing here imports the till's camera, model or
server code (tests/test_backend.py checks).
"""
