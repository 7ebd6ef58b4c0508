"""Alembic environment: runs on the connection handed over by ``db.upgrade`` (or, from the
alembic command line, on ``sqlalchemy.url`` of the ini file)."""

from alembic import context

from rlhfkit.feedback.db import make_engine, metadata

config = context.config


def _run(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    engine = make_engine(config.get_main_option("sqlalchemy.url"))
    with engine.begin() as conn:
        _run(conn)
