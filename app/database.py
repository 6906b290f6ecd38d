"""The database engine and session factory for PostgreSQL (asyncpg) and SQLite.

Every connection carries deadlines (``app.settings.DatabaseLimits``): on PostgreSQL
``statement_timeout``, ``lock_timeout`` and ``idle_in_transaction_session_timeout``,
so no request or billing step can hold a connection (or a row lock) for long; the
pool is bounded and gives up quickly when exhausted.

SQLite is the embedded default, so it is tuned to behave like a server database for
our purposes: foreign keys on, WAL, a busy timeout bounded by the statement deadline,
and ``BEGIN IMMEDIATE`` so a write transaction takes the write lock up front (SQLite's
stand-in for row locks).
"""

from __future__ import annotations

import socket
from typing import Any

from sqlalchemy import event, exc
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

from app.settings import DatabaseLimits, async_database_url

# SQLSTATEs that mean "not now", not "wrong": a lock or statement deadline passed,
# or the server ended the session (restart, pg_terminate_backend, idle timeout).
LOCK_NOT_AVAILABLE = "55P03"
TOO_MANY_CONNECTIONS = "53300"
QUERY_CANCELED = "57014"
IDLE_IN_TRANSACTION_TIMEOUT = "25P03"
SERVER_GONE_PREFIXES = ("08", "57P")
INSUFFICIENT_RESOURCES = "53"


def create_engine(
    url: str,
    *,
    immediate: bool = True,
    limits: DatabaseLimits | None = None,
    **kwargs: Any,
) -> AsyncEngine:
    """An engine for ``url``; on SQLite ``immediate`` makes every transaction a writer."""
    url = async_database_url(url)
    limits = limits or DatabaseLimits()
    if url.startswith("sqlite"):
        # SQLite has one writer: a write waits for every writer queued before it, so
        # its bound is the statement deadline rather than the (short) lock deadline.
        busy_ms = limits.statement_timeout_ms or DatabaseLimits.statement_timeout_ms
        engine = create_async_engine(url, connect_args={"timeout": busy_ms / 1000}, **kwargs)
        _tune_sqlite(engine, immediate=immediate, busy_timeout_ms=busy_ms)
        return engine
    kwargs.setdefault("pool_size", limits.pool_size)
    kwargs.setdefault("max_overflow", limits.max_overflow)
    kwargs.setdefault("pool_timeout", limits.pool_timeout_seconds)
    connect_args: dict[str, Any] = kwargs.pop("connect_args", {})
    connect_args.setdefault(
        "server_settings",
        {
            "statement_timeout": str(limits.statement_timeout_ms),
            "lock_timeout": str(limits.lock_timeout_ms),
            "idle_in_transaction_session_timeout": str(limits.idle_in_transaction_timeout_ms),
        },
    )
    engine = create_async_engine(url, connect_args=connect_args, **kwargs)
    _skip_closed_connections(engine)
    return engine


def _skip_closed_connections(engine: AsyncEngine) -> None:
    """Instead of ``pool_pre_ping`` (a round trip per checkout): asyncpg notices a
    server-closed socket by itself (``is_closed``), so a checkout of such a connection
    is refused for free and the pool opens a fresh one. A connection that dies while
    in use fails that statement; SQLAlchemy then invalidates the pool's older
    connections, so the next requests get new ones."""

    @event.listens_for(engine.sync_engine, "checkout")
    def _on_checkout(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
        raw = getattr(dbapi_connection, "_connection", None)
        if raw is not None and raw.is_closed():
            raise exc.DisconnectionError("connection closed by the server")


def _tune_sqlite(engine: AsyncEngine, *, immediate: bool, busy_timeout_ms: int) -> None:
    sync_engine = engine.sync_engine

    @event.listens_for(sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the driver, decide when transactions begin.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        if engine.url.database not in (None, "", ":memory:"):
            cursor.execute("PRAGMA journal_mode=WAL")
        cursor.close()

    @event.listens_for(sync_engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker:  # type: ignore[type-arg]
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=True)


def is_sqlite(engine: AsyncEngine) -> bool:
    return engine.dialect.name == "sqlite"


def busy_reason(error: BaseException) -> str | None:
    """A sentence for a person when ``error`` is the database saying "not now" (a
    deadline passed, the pool is exhausted, the connection was lost); None otherwise.

    The exceptions it was raised while handling count too: a connection lost in the
    middle of a statement often surfaces as the failed rollback that followed."""
    seen: set[int] = set()
    pending: list[BaseException] = [error]
    while pending:
        current = pending.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        reason = _busy_reason(current)
        if reason is not None:
            return reason
        pending += [e for e in (current.__cause__, current.__context__) if e is not None]
    return None


def _busy_reason(error: BaseException) -> str | None:
    if isinstance(error, (ConnectionError, socket.gaierror)):
        # The driver could not open a connection at all (server down, refused, unknown host).
        return "The database cannot be reached right now; nothing was changed. Try again shortly."
    if isinstance(error, exc.TimeoutError):
        return "The service is busy: no database connection came free in time. Try again shortly."
    if not isinstance(error, exc.DBAPIError):
        return None
    state = getattr(error.orig, "sqlstate", None) or ""
    if state == LOCK_NOT_AVAILABLE:
        return (
            "Another operation is holding this record; nothing was changed. "
            "Try again in a few seconds."
        )
    if state == QUERY_CANCELED:
        return (
            "The request ran past its time limit and was stopped; nothing was changed. "
            "Try again, or ask for less at once."
        )
    if state.startswith(INSUFFICIENT_RESOURCES):
        # Out of connection slots (53300), memory or disk: the server says "not now".
        return "The database is out of capacity right now; nothing was changed. Try again shortly."
    if error.connection_invalidated or state.startswith(SERVER_GONE_PREFIXES):
        return "The connection to the database was lost; try again in a moment."
    if state == TOO_MANY_CONNECTIONS:
        return "The service is busy: the database takes no more connections now. Try again shortly."
    if state == IDLE_IN_TRANSACTION_TIMEOUT:
        return "The database ended an idle transaction; try again."
    if isinstance(error, exc.OperationalError) and "database is locked" in str(error.orig):
        return (
            "Another operation is writing right now; nothing was changed. "
            "Try again in a few seconds."
        )
    return None
