"""Alembic's entry point: migrations run on the connection agegate.backend.db.migrate hands over."""

from alembic import context
from sqlalchemy import create_engine

from agegate.backend.db import metadata

connection = context.config.attributes.get("connection")


def _run(conn) -> None:  # noqa: ANN001
    # render_as_batch: SQLite alters tables by copying them; Alembic's batch mode does that for us.
    context.configure(connection=conn, target_metadata=metadata, render_as_batch=conn.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()


if connection is not None:
    _run(connection)
else:  # `alembic -x url=... upgrade head` from a shell
    with create_engine(context.get_x_argument(as_dictionary=True)["url"]).begin() as conn:
        _run(conn)
