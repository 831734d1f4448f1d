"""Engine and sessionmaker construction (called from the app's lifespan, never at import)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.pool import NullPool

from .effects import EffectSession


def create_engine(
    url: str,
    *,
    pool_size: int = 5,
    max_overflow: int = 15,
    statement_timeout_seconds: float = 0,
    **kwargs: Any,
) -> AsyncEngine:
    """An async engine for PostgreSQL (asyncpg) or SQLite (aiosqlite), tuned for the service.

    On PostgreSQL, `statement_timeout_seconds` (0: none) bounds every statement of the pool's
    connections, so no request can hold a connection and its locks indefinitely.
    """
    if url.startswith("sqlite"):
        engine = create_async_engine(url, poolclass=NullPool if ":memory:" not in url else None, **kwargs)
        _configure_sqlite(engine)
        return engine
    if statement_timeout_seconds > 0:
        server_settings = {"statement_timeout": str(int(statement_timeout_seconds * 1000))}
        kwargs["connect_args"] = {**kwargs.get("connect_args", {}), "server_settings": server_settings}
    return create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_pre_ping=True,
        pool_recycle=1800,
        **kwargs,
    )


def _configure_sqlite(engine: AsyncEngine) -> None:
    """WAL, foreign keys, and BEGIN IMMEDIATE: every transaction takes the single write lock
    up front, so concurrent writers queue on busy_timeout instead of failing on upgrade."""

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
        connection.exec_driver_sql("BEGIN IMMEDIATE")


# What every part of the service opens sessions with (made by create_sessionmaker).
Sessionmaker = async_sessionmaker[EffectSession]


def create_sessionmaker(engine: AsyncEngine) -> Sessionmaker:
    """Sessions that carry the Effects of their transaction (db/effects.py)."""
    return async_sessionmaker(engine, class_=EffectSession, expire_on_commit=False, autoflush=False)
