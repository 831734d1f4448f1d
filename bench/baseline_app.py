"""The raw baselines' HTTP server: Starlette + asyncpg, served by uvicorn like the service.

Each endpoint does the least a service could do for the same request: one SQL statement on
a pooled connection, the answer as JSON. bench/run_all.py starts it as

    uvicorn baseline_app:create_app --factory --app-dir bench --host 127.0.0.1 --port N

with BENCH_DSN (a plain postgresql:// DSN) and BENCH_POOL (connections, default 20) in the
environment, on the same database as the service, and compares the service with it.

- POST /heartbeat  {"agent": name}      B2's baseline: UPDATE agents ... RETURNING
- POST /task       {"id": n}            B7's baseline: SELECT id, status FROM tasks
- GET  /v1/tasks?project=P              the v1 workflow: every PENDING task of the project
- POST /v1/tasks/{id}/claim {"agent"}   the v1 workflow: conditional UPDATE, 409 when taken
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

HEARTBEAT_SQL = "UPDATE agents SET last_heartbeat_at = now() WHERE name = $1 RETURNING id, name, status"
TASK_SQL = "SELECT id, status FROM tasks WHERE id = $1"
# v1 listed every pending task with its fields, highest priority first.
V1_LIST_SQL = (
    "SELECT id, title, status, priority, task_type, created_at FROM tasks "
    "WHERE project_id = $1 AND status = 'PENDING' AND deleted_at IS NULL ORDER BY priority DESC, created_at, id"
)
V1_CLAIM_SQL = (
    "UPDATE tasks SET status = 'ASSIGNED', attempt = attempt + 1, assigned_at = now(), updated_at = now(), "
    "lease_expires_at = now() + interval '1 day' "
    "WHERE id = $1 AND status = 'PENDING' RETURNING id, status"
)


def create_app() -> Starlette:
    dsn = os.environ["BENCH_DSN"]
    size = int(os.environ.get("BENCH_POOL", "20"))
    pool: asyncpg.Pool | None = None

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        nonlocal pool
        pool = await asyncpg.create_pool(dsn, min_size=size, max_size=size, ssl=False)
        try:
            yield
        finally:
            await pool.close()

    async def heartbeat(request: Request) -> Response:
        body = json.loads(await request.body())
        assert pool is not None
        row = await pool.fetchrow(HEARTBEAT_SQL, body["agent"])
        if row is None:
            return JSONResponse({"error": "no such agent"}, status_code=404)
        return JSONResponse({"id": row["id"], "name": row["name"], "status": row["status"]})

    async def task(request: Request) -> Response:
        body = json.loads(await request.body())
        assert pool is not None
        row = await pool.fetchrow(TASK_SQL, int(body["id"]))
        return JSONResponse(None if row is None else {"id": str(row["id"]), "status": row["status"]})

    async def v1_list(request: Request) -> Response:
        assert pool is not None
        rows = await pool.fetch(V1_LIST_SQL, int(request.query_params["project"]))
        return JSONResponse(
            [
                {
                    "id": r["id"],
                    "title": r["title"],
                    "status": r["status"].lower(),
                    "priority": r["priority"],
                    "task_type": r["task_type"],
                    "created_at": r["created_at"].isoformat(),
                }
                for r in rows
            ]
        )

    async def v1_claim(request: Request) -> Response:
        body = json.loads(await request.body())
        assert pool is not None
        body["agent"]  # v1 recorded the assignee; the claim here is the conditional UPDATE alone
        row = await pool.fetchrow(V1_CLAIM_SQL, int(request.path_params["task_id"]))
        if row is None:
            return JSONResponse({"detail": "task is not pending"}, status_code=409)
        return JSONResponse({"id": row["id"], "status": row["status"].lower()})

    routes = [
        Route("/heartbeat", heartbeat, methods=["POST"]),
        Route("/task", task, methods=["POST"]),
        Route("/v1/tasks", v1_list, methods=["GET"]),
        Route("/v1/tasks/{task_id:int}/claim", v1_claim, methods=["POST"]),
        Route("/health", lambda request: JSONResponse({"status": "ok"})),
    ]
    return Starlette(routes=routes, lifespan=lifespan)
