"""Idempotency keys: a repeated mutation (same caller, same key) returns its first result."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from ..errors import BadInput
from .base import insert_ignore, rowcount
from .models import IdempotencyKey

MAX_KEY_LENGTH = 200


async def claim_key(session: AsyncSession, *, caller: str, key: str, operation: str) -> int | None:
    """Reserve `key` for this mutation, or return the task id of its first result.

    The reserving insert holds the key's unique-index entry until commit, so a concurrent
    repeat waits here and then reads the first result instead of acting twice. Returns None
    when the caller should go ahead (and later call `remember`).
    """
    if not key or len(key) > MAX_KEY_LENGTH:
        raise BadInput(f"idempotencyKey must be 1 to {MAX_KEY_LENGTH} characters")
    inserted = await insert_ignore(session, IdempotencyKey, {"caller": caller, "key": key, "operation": operation})
    if inserted:
        return None
    prior = await session.scalar(
        select(IdempotencyKey).where(IdempotencyKey.caller == caller, IdempotencyKey.key == key)
    )
    assert prior is not None
    if prior.operation != operation:
        raise BadInput(f"idempotencyKey '{key}' was already used for {prior.operation}; use a new key for {operation}")
    if prior.task_id is None:
        raise BadInput(f"idempotencyKey '{key}' is in use by a request that did not finish; retry shortly")
    return prior.task_id


async def remember(session: AsyncSession, *, caller: str, key: str, task_id: int) -> None:
    await session.execute(
        update(IdempotencyKey).where(IdempotencyKey.caller == caller, IdempotencyKey.key == key).values(task_id=task_id)
    )


async def purge_keys(session: AsyncSession, *, older_than: datetime) -> int:
    return rowcount(await session.execute(delete(IdempotencyKey).where(IdempotencyKey.created_at < older_than)))
