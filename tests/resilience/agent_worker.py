"""One agent process for the resilience tests: a few agents, each on its own HTTP connection,
claim tasks of one project to completion. Run as a script (it imports nothing of the
service or the tests):

    python agent_worker.py '<json config>'

Config: urls (tried in turn: a failed connection moves an agent to the next one), agents
(names, registered already), project, start (startTask before submitting), work_seconds (how
long the agent "works" on a task, holding it, before it submits), stop_file (the agents stop
once it exists and there is nothing to claim), deadline_seconds (hard stop), out (a JSON-lines
record of what happened, flushed line by line so that a SIGKILL leaves a true record).

Records: {"op": "ready"}, {"op": "claimed", "task", "attempt"}, {"op": "working", "task",
"attempt", "until"} (started; working on it without calls until `until`), {"op":
"completed", "task", "attempt"}, {"op": "lost", "task", "attempt", "code"} (the task was
taken away, e.g. by the reaper), {"op": "error", "call", "code", "message", "retryable",
"seconds"} (a failed call), {"op": "adopted", "task", "attempt"} (a claim whose answer was
lost had been applied; the agent works the task), {"op": "slow", "call", "seconds"} (a call that took over 2 s).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import httpx

HEARTBEAT = "mutation($agent: String!) { heartbeat(agent: $agent) { name } }"
CLAIM_NEXT = "mutation($agent: String!, $p: ID) { claimNextTask(agent: $agent, projectId: $p) { id attempt status } }"
START = "mutation($id: ID!, $agent: String!, $a: Int) { startTask(id: $id, agent: $agent, attempt: $a) { status } }"
SUBMIT = """mutation($id: ID!, $agent: String!, $a: Int, $key: String) {
  submitTask(id: $id, agent: $agent, attempt: $a, summary: "done", idempotencyKey: $key) { status attempt }
}"""
MINE = "query($agent: String!) { agent(name: $agent) { currentTasks { id attempt status } } }"
# The task was taken away from the agent (reaped, re-claimed): give it up, claim another.
GONE = {"STALE_ATTEMPT", "INVALID_TRANSITION", "FORBIDDEN", "NOT_FOUND"}


class CallFailed(Exception):
    def __init__(self, code: str, message: str, retryable: bool):
        super().__init__(f"{code}: {message}")
        self.code, self.message, self.retryable = code, message, retryable


class Agent:
    def __init__(self, name: str, config: dict[str, Any], out: Any):
        self.name = name
        self.config = config
        self.urls: list[str] = config["urls"]
        self.url_index = 0
        self.out = out
        self.deadline = time.monotonic() + float(config["deadline_seconds"])
        self.http = httpx.AsyncClient(timeout=float(config.get("request_timeout", 60)), trust_env=False)

    def record(self, op: str, **fields: Any) -> None:
        self.out.write(json.dumps({"op": op, "agent": self.name, "t": time.time(), **fields}) + "\n")
        self.out.flush()

    async def call(self, name: str, query: str, **variables: Any) -> Any:
        """One GraphQL call; raises CallFailed with the error's code (TRANSPORT for a failed
        connection, which also moves the agent to the next URL)."""
        started = time.monotonic()
        try:
            response = await self.http.post(
                self.urls[self.url_index] + "/graphql", json={"query": query, "variables": variables}
            )
            body = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            self.url_index = (self.url_index + 1) % len(self.urls)
            raise CallFailed("TRANSPORT", f"{type(exc).__name__}: {exc}", True) from exc
        finally:
            seconds = time.monotonic() - started
            if seconds > 2:
                self.record("slow", call=name, seconds=round(seconds, 3))
        if body.get("errors"):
            error = body["errors"][0]
            extensions = error.get("extensions") or {}
            failure = CallFailed(
                str(extensions.get("code")), str(error.get("message")), bool(extensions.get("retryable"))
            )
            self.record(
                "error",
                call=name,
                code=failure.code,
                message=failure.message,
                retryable=failure.retryable,
                seconds=round(time.monotonic() - started, 3),
            )
            raise failure
        return body["data"]

    async def persist(self, name: str, query: str, **variables: Any) -> Any:
        """`call`, repeated while it fails for a reason worth retrying (the connection, or an
        error the server marks retryable) and the deadline allows."""
        while True:
            try:
                return await self.call(name, query, **variables)
            except CallFailed as failure:
                if failure.code == "TRANSPORT":
                    self.record("error", call=name, code="TRANSPORT", message=failure.message, retryable=True)
                if not (failure.code == "TRANSPORT" or failure.retryable) or time.monotonic() > self.deadline:
                    raise
                await asyncio.sleep(0.1)

    async def run(self) -> None:
        async with self.http:
            await self.persist("heartbeat", HEARTBEAT, agent=self.name)
            self.record("ready")
            stop_file = Path(self.config["stop_file"])
            known: set[tuple[str, int]] = set()
            maybe_lost = False
            while time.monotonic() < self.deadline:
                if maybe_lost:
                    # A claim whose answer was lost may have been applied: adopt such a task
                    # (ASSIGNED to us, unknown here) rather than leave it held forever.
                    try:
                        mine = (await self.call("mine", MINE, agent=self.name))["agent"]["currentTasks"]
                    except CallFailed:
                        await asyncio.sleep(0.1)
                        continue
                    maybe_lost = False
                    for task in mine:
                        if task["status"] == "ASSIGNED" and (task["id"], task["attempt"]) not in known:
                            self.record("adopted", task=task["id"], attempt=task["attempt"])
                            known.add((task["id"], task["attempt"]))
                            await self.work(task["id"], task["attempt"])
                try:
                    claimed = (await self.call("claim", CLAIM_NEXT, agent=self.name, p=self.config["project"]))[
                        "claimNextTask"
                    ]
                except CallFailed as failure:
                    if failure.code == "TRANSPORT":
                        self.record("error", call="claim", code="TRANSPORT", message=failure.message, retryable=True)
                    maybe_lost = maybe_lost or failure.code == "TRANSPORT" or failure.retryable
                    await asyncio.sleep(0.1)
                    continue
                if claimed is None:
                    if stop_file.exists():  # noqa: ASYNC240 - one stat between idle polls
                        return
                    await asyncio.sleep(0.1)
                    continue
                known.add((claimed["id"], claimed["attempt"]))
                await self.work(claimed["id"], claimed["attempt"])
            self.record("deadline")

    async def work(self, task: str, attempt: int) -> None:
        self.record("claimed", task=task, attempt=attempt)
        try:
            if self.config.get("start"):
                await self.persist("start", START, id=task, agent=self.name, a=attempt)
            if self.config.get("work_seconds"):
                seconds = float(self.config["work_seconds"])
                self.record("working", task=task, attempt=attempt, until=time.time() + seconds)
                await asyncio.sleep(seconds)
            key = f"{self.name}-{task}-{attempt}"
            done = await self.persist("submit", SUBMIT, id=task, agent=self.name, a=attempt, key=key)
        except CallFailed as failure:
            if failure.code not in GONE and failure.code != "TRANSPORT" and not failure.retryable:
                raise
            self.record("lost", task=task, attempt=attempt, code=failure.code)
            return
        assert done["submitTask"]["status"] == "COMPLETED", done
        self.record("completed", task=task, attempt=attempt)


async def main(config: dict[str, Any]) -> None:
    with Path(config["out"]).open("a", encoding="utf-8") as out:  # noqa: ASYNC230 - once, at startup
        await asyncio.gather(*(Agent(name, config, out).run() for name in config["agents"]))


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.argv[1])))
