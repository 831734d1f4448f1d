"""Engine and sessionmaker construction (called from the app's lifespan, never at import)."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import event, make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.pool import NullPool

from .effects import EffectSession

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


def create_engine(
    url: str,
    *,
    pool_size: int = 20,
    max_overflow: int = 0,
    pre_ping: bool = True,
    statement_timeout_seconds: float = 0,
    **kwargs: Any,
) -> AsyncEngine:
    """An async engine for PostgreSQL (asyncpg) or SQLite (aiosqlite), tuned for the service.

    On PostgreSQL the pool keeps up to `pool_size` connections open once they have been
    opened (a request that finds none idle waits for one; `max_overflow` more are opened
    for it and closed again right after, which costs a connection setup per request when
    the concurrency stays above `pool_size`). `pre_ping` checks a connection with a round
    trip before it is handed out when it has been idle for PING_AFTER_IDLE_SECONDS or more
    (a restarted database then costs no request an error); one back in use sooner is not
    checked: under load that check was a transaction round trip (BEGIN, ";", COMMIT) per
    request, 20 % of a `task(id)` read's CPU, and a connection that dies while busy fails
    its next statement, which SQLAlchemy answers by replacing the pool's connections.
    A loopback database is reached without first asking for TLS, unless the URL says how
    (`?ssl=...`). `statement_timeout_seconds` (0: none) bounds every statement of the pool's
    connections, so no request can hold a connection and its locks indefinitely.
    """
    if url.startswith("sqlite"):
        engine = create_async_engine(url, poolclass=NullPool if ":memory:" not in url else None, **kwargs)
        _configure_sqlite(engine)
        return engine
    connect_args = dict(kwargs.pop("connect_args", {}))
    if statement_timeout_seconds > 0:
        connect_args["server_settings"] = {"statement_timeout": str(int(statement_timeout_seconds * 1000))}
    parsed = make_url(url)
    if parsed.host in LOOPBACK_HOSTS and not {"ssl", "sslmode"} & set(parsed.query):
        connect_args.setdefault("ssl", False)  # asyncpg's default ("prefer") would try TLS first
    engine = create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_recycle=1800,
        connect_args=connect_args,
        **kwargs,
    )
    if pre_ping:
        _ping_idle_connections(engine)
    return engine


PING_AFTER_IDLE_SECONDS = 1.0


def _ping_idle_connections(engine: AsyncEngine) -> None:
    """Pessimistic disconnect handling for connections that sat idle (SQLAlchemy's
    "checkout" event recipe): a failed ping makes the pool discard the connection and hand
    out another."""

    @event.listens_for(engine.sync_engine.pool, "checkin")
    def _on_checkin(_dbapi_connection: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine.sync_engine.pool, "checkout")
    def _on_checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        idle_since = record.info.get("idle_since")
        if idle_since is None or time.monotonic() - idle_since < PING_AFTER_IDLE_SECONDS:
            return  # new, or back in use right away
        try:
            dbapi_connection.ping()
        except Exception as exc:  # any failure: this connection is not usable
            raise DisconnectionError(f"pooled connection failed its ping: {exc}") from exc


READ_ONLY = "task_service_read_only"  # execution option of the engine Services.read() uses


def _configure_sqlite(engine: AsyncEngine) -> None:
    """WAL, foreign keys, and BEGIN IMMEDIATE: every writing transaction takes the single
    write lock up front, so concurrent writers queue on busy_timeout instead of failing on
    upgrade. Read sessions (an engine with the READ_ONLY option) begin DEFERRED: in WAL mode
    they read a snapshot and never wait for the writer nor make it wait, so a read opened
    while a write transaction is open (or one left open) cannot stall the writers."""

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Any) -> None:
        read_only = connection.get_execution_options().get(READ_ONLY, False)
        connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


# What every part of the service opens sessions with (made by create_sessionmaker).
Sessionmaker = async_sessionmaker[EffectSession]


def create_sessionmaker(engine: AsyncEngine) -> Sessionmaker:
    """Sessions that carry the Effects of their transaction (db/effects.py)."""
    return async_sessionmaker(engine, class_=EffectSession, expire_on_commit=False, autoflush=False)
