"""Registry metadata tables and the engine that holds them (SQLite by default, PostgreSQL when configured).

Version numbers stay gapless because each model has one ``registered_models`` row whose
``last_version`` is read under a row lock (``SELECT ... FOR UPDATE`` on PostgreSQL; on SQLite a
process-wide writer lock plus ``BEGIN IMMEDIATE``), incremented and written in the SAME transaction
that inserts the version: a failed transaction rolls the counter back with the version.
``(model_name, version)`` is the primary key of ``model_versions`` as a last line of defence.
Every change also inserts its announcement into ``outbox`` in that transaction.
Weight deltas are numbered the same way by ``last_delta``, which (unlike a table's max) never goes
back when old deltas are deleted, so a sequence number names one delta forever.

Tables are created with ``create_all``; columns added since are added to an existing database at
start-up (``_add_missing_columns``), so a registry.db from an older release still opens.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from sqlalchemy import (
    BigInteger, Column, Connection, Engine, Integer, LargeBinary, MetaData, String, Table, Text,
    create_engine, event, inspect, select, text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import OperationalError, ProgrammingError
from sqlalchemy.pool import NullPool

metadata = MetaData()

# BIGINT on PostgreSQL, INTEGER on SQLite (so the primary key is SQLite's rowid and autoincrements).
_Id = BigInteger().with_variant(Integer(), "sqlite")

registered_models = Table(
    "registered_models", metadata,
    Column("name", String(200), primary_key=True),
    Column("last_version", BigInteger, nullable=False, default=0),
    Column("created_at_ms", BigInteger, nullable=False),
    # Added after the first release: ``_ADDED_COLUMNS`` adds it to older databases.
    Column("last_delta", BigInteger, nullable=False, default=0, server_default=text("0")),
)

model_versions = Table(
    "model_versions", metadata,
    Column("model_name", String(200), primary_key=True),
    Column("version", BigInteger, primary_key=True),
    Column("state", String(16), nullable=False),  # active | archived
    Column("manifest_json", Text, nullable=False),
    Column("metrics_json", Text, nullable=False),
    Column("training_offsets_json", Text, nullable=False),
    Column("artifact_sha256", String(64), nullable=False, index=True),
    Column("artifact_size_bytes", BigInteger, nullable=False),
    Column("created_at_ms", BigInteger, nullable=False),  # from the manifest (when it was trained)
    Column("registered_at_ms", BigInteger, nullable=False),
    Column("parent_version", BigInteger, nullable=False, default=0),
    Column("trainer_id", String(200), nullable=False, default=""),
    Column("gate_decision", String(16), nullable=False, default=""),
    Column("gate_reason", Text, nullable=False, default=""),
    Column("archived_at_ms", BigInteger, nullable=True),
)

# Weight deltas of registered versions; only the newest ``registry.keep_deltas`` per model are kept.
model_deltas = Table(
    "model_deltas", metadata,
    Column("model_name", String(200), primary_key=True),
    Column("sequence", BigInteger, primary_key=True),  # registered_models.last_delta when it was registered
    Column("base_version", BigInteger, nullable=False),
    Column("training_offsets_json", Text, nullable=False),
    Column("created_at_ms", BigInteger, nullable=False),  # from the trainer
    Column("registered_at_ms", BigInteger, nullable=False),
    Column("newest_event_ms", BigInteger, nullable=False),
    Column("payload_sha256", String(64), nullable=False),
    Column("payload_size_bytes", BigInteger, nullable=False),
    Column("payload", LargeBinary, nullable=False),
    Column("trainer_id", String(200), nullable=False, default=""),
)

aliases = Table(
    "aliases", metadata,
    Column("model_name", String(200), primary_key=True),
    Column("alias", String(100), primary_key=True),
    Column("version", BigInteger, nullable=False),
    Column("updated_at_ms", BigInteger, nullable=False),
)

# Every alias move, so rollback knows what `production` pointed to before.
alias_history = Table(
    "alias_history", metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("model_name", String(200), nullable=False, index=True),
    Column("alias", String(100), nullable=False),
    Column("version", BigInteger, nullable=False),
    Column("previous_version", BigInteger, nullable=False, default=0),
    Column("action", String(32), nullable=False),
    Column("reason", Text, nullable=False, default=""),
    Column("at_ms", BigInteger, nullable=False),
)

# Stored archives, content-addressed; a row exists only after the bytes are in the store.
artifacts = Table(
    "artifacts", metadata,
    Column("sha256", String(64), primary_key=True),
    Column("size_bytes", BigInteger, nullable=False),
    Column("stored_at_ms", BigInteger, nullable=False),
)

# Announcements not yet acknowledged by Kafka; ``id`` is the event's sequence number.
outbox = Table(
    "outbox", metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("model_name", String(200), nullable=False),
    Column("payload", LargeBinary, nullable=False),
    Column("created_at_ms", BigInteger, nullable=False),
    sqlite_autoincrement=True,  # never reuse a sequence number after its row is deleted
)

# Announcements that can never be sent (too large for Kafka): moved out of the outbox so they
# block nothing after them, kept so an operator sees them (`streamrec models list`).
parked_announcements = Table(
    "parked_announcements", metadata,
    Column("id", _Id, primary_key=True, autoincrement=False),  # the outbox id = the event's sequence
    Column("model_name", String(200), nullable=False, index=True),
    Column("payload", LargeBinary, nullable=False),
    Column("size_bytes", BigInteger, nullable=False),
    Column("reason", Text, nullable=False),
    Column("parked_at_ms", BigInteger, nullable=False),
)

# Archives this registry process is putting into the store and has not committed yet: start-up
# recovery removes only its own leftovers, never another replica's upload in flight.
pending_uploads = Table(
    "pending_uploads", metadata,
    Column("sha256", String(64), primary_key=True),
    Column("owner", String(200), primary_key=True),
    Column("started_at_ms", BigInteger, nullable=False),
)

# Columns added to existing tables since their first release: (table, column, SQL type and default).
_ADDED_COLUMNS = (
    (registered_models, "last_delta", "BIGINT NOT NULL DEFAULT 0"),
)


class Database:
    """The engine plus the write discipline: ``with db.write() as conn`` is one serialised transaction."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        if self.is_sqlite:
            path = url.split("///", 1)[1] if "///" in url else ""
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            # One connection per checkout: SQLite connections are cheap and WAL lets readers run beside the writer.
            self.engine: Engine = create_engine(url, poolclass=NullPool,
                                                connect_args={"check_same_thread": False, "timeout": 30})
            _sqlite_setup(self.engine)
        else:
            self.engine = create_engine(url, pool_pre_ping=True, pool_size=8, max_overflow=16)
        # SQLite allows one writer: serialise this process's writers instead of spinning on SQLITE_BUSY.
        self._writer = threading.Lock() if self.is_sqlite else None
        metadata.create_all(self.engine)
        self._add_missing_columns()

    @contextmanager
    def write(self) -> Iterator[Connection]:
        if self._writer is None:
            with self.engine.begin() as conn:
                yield conn
            return
        with self._writer:
            with self.engine.execution_options(sqlite_begin="BEGIN IMMEDIATE").begin() as conn:
                yield conn

    @contextmanager
    def read(self) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            yield conn

    def insert_ignore(self, table: Table, **values):
        """INSERT that does nothing if the primary key exists (portable upsert for first-use rows)."""
        dialect = postgresql if not self.is_sqlite else sqlite
        return dialect.insert(table).values(**values).on_conflict_do_nothing()

    def ping(self) -> bool:
        try:
            with self.engine.connect() as conn:
                conn.execute(select(1))
            return True
        except Exception:  # noqa: BLE001 - readiness probe: any failure means not ready
            return False

    def close(self) -> None:
        self.engine.dispose()

    def _add_missing_columns(self) -> None:
        """Bring a database created by an older release up to the tables above (``create_all`` adds no columns)."""
        for table, column, ddl in _ADDED_COLUMNS:
            if column in {c["name"] for c in inspect(self.engine).get_columns(table.name)}:
                continue
            # Replicas sharing a PostgreSQL database may start together: IF NOT EXISTS makes the loser a no-op.
            if_not_exists = "" if self.is_sqlite else "IF NOT EXISTS "
            try:
                with self.write() as conn:
                    conn.exec_driver_sql(f"ALTER TABLE {table.name} ADD COLUMN {if_not_exists}{column} {ddl}")
            except (OperationalError, ProgrammingError):
                # Another process added it between the look and the ALTER (SQLite: "duplicate column name").
                if column not in {c["name"] for c in inspect(self.engine).get_columns(table.name)}:
                    raise


def _sqlite_setup(engine: Engine) -> None:
    # pysqlite's own transaction handling defers BEGIN; take control so writers can BEGIN IMMEDIATE
    # (take the write lock up front, never fail half-way on SQLITE_BUSY) and readers plain BEGIN.
    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn, _record):
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn):
        conn.exec_driver_sql(conn.get_execution_options().get("sqlite_begin", "BEGIN"))
