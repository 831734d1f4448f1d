"""Stateful property-based fuzzing of the whole API through the real schema.

A hypothesis state machine registers agents, creates projects and tasks, and drives every
mutation (and the queries) with arguments drawn both from what exists (ids, names, the
current attempt) and from hostile values (unknown and malformed ids, out-of-range ints,
empty, huge and odd strings, JSON of any shape), as the open service, the admin key or an
agent's token. The reaper runs now and then with a clock moved forward. After every step:
no error is INTERNAL or lacks a code, and every invariant of tests/invariants.py holds.

The machine runs in a worker thread; each operation is scheduled on the test's event loop
(where the `services` fixture's engine lives) and waited for. On failure hypothesis prints
the shrunk sequence of steps and the seed to reproduce it (`--hypothesis-seed=N`).
"""

from __future__ import annotations

import asyncio
import json
import os
from collections import Counter
from collections.abc import Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, rule
from sqlalchemy import text

from task_service.api.schema import Schema
from task_service.reaper import Reaper
from task_service.resolvers.auth import Caller, Role
from task_service.resolvers.context import Context
from task_service.services import Services
from tests import invariants
from tests.conftest import empty_database
from tests.fuzzing import CODES, DERANDOMIZE

# FUZZ_EXAMPLES sequences of up to FUZZ_STEPS steps on each backend: with the defaults about
# 1,700 operations per backend (each followed by the invariant check), a minute or two on
# PostgreSQL on a 2-core machine. A nightly run may raise both.
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "40"))
STEPS = int(os.environ.get("FUZZ_STEPS", "40"))
# FUZZ_SHRINK=0 reports a failure as found, without minimising it (faster while debugging).
PHASES = [p for p in Phase if os.environ.get("FUZZ_SHRINK", "1") != "0" or p is not Phase.shrink]

# Steps after which an agent may legitimately hold more than its (new) limit: lowering the
# limit by re-registering, and bringing back a soft-deleted task the agent still held.
LIMIT_MAY_BE_EXCEEDED = {"registerAgent", "restoreTask", "restoreProject"}


Strategy = st.SearchStrategy[Any]


def _retryable(extensions: dict[str, Any] | None) -> bool:
    """INTERNAL with retryable: the database could not be reached (db/health.py)."""
    return bool(extensions) and extensions.get("code") == "INTERNAL" and extensions.get("retryable") is True


class _Everyone(frozenset[int]):
    """Contains every agent id."""

    def __contains__(self, item: object) -> bool:
        return True


EVERYONE = _Everyone()

TASK = "id status attempt assignee { name } ready"
SKILLS = ["python", "sql", "writing"]
TYPES = ["research", "review", "publish", "made-up-type"]

# --- hostile values -------------------------------------------------------------------------

odd_text = st.one_of(
    st.sampled_from(["", " ", "\x00", "a\nb", "💥", "ñame", "'; DROP TABLE tasks; --", "%_\\", "null", "0"]),
    st.text(max_size=30),
    st.integers(0, 12_000).map(lambda n: "x" * n),
)
bad_ids = st.one_of(
    st.sampled_from(["0", "-1", "", " 1", "1.5", "1e3", "abc", "0x10", "9" * 23, "9223372036854775808"]),
    st.integers(-(2**70), 2**70).map(str),
    st.text(max_size=10),
)
odd_ints = st.one_of(
    st.sampled_from([0, -1, 1, 2**31 - 1, -(2**31), 2**31, 2**53, -(2**63)]),
    st.integers(-1000, 1000),
)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**80), 2**80)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
odd_json = json_values | st.sampled_from([[[[[[[[[[[]]]]]]]]]], {"": {"": None}}, "x" * 50_000, {"\x00": "\x00"}])
# Mostly past (claimable at once), sometimes in the future (scheduled).
datetimes = st.none() | st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
).map(lambda d: d.isoformat())
odd_datetimes = st.sampled_from(
    ["9999-12-31T23:59:59+00:00", "0001-01-01T00:00:00Z", "not a date", "", "2020-13-45T99:00:00Z", "2020-01-01"]
)


def _json(value: Any) -> Any:
    """A JSON column read with plain SQL: text on PostgreSQL, sometimes decoded already."""
    return (json.loads(value) if isinstance(value, str) else value) or []


# The valid next operation per status (advance): its document, by operation name.
_NEXT = {
    "claimTask": "mutation($id: ID!, $a: String) { claimTask(id: $id, agent: $a) { %s } }",
    "startTask": "mutation($id: ID!, $a: String, $n: Int) { startTask(id: $id, agent: $a, attempt: $n) { %s } }",
    "submitTask": "mutation($id: ID!, $a: String, $n: Int, $r: JSON) "
    "{ submitTask(id: $id, agent: $a, attempt: $n, result: $r) { %s } }",
    "reportProgress": "mutation($id: ID!, $a: String, $n: Int) "
    "{ reportProgress(id: $id, agent: $a, attempt: $n, progress: 50) { %s } }",
    "failTask": "mutation($id: ID!, $a: String, $n: Int, $r: Boolean) "
    '{ failTask(id: $id, agent: $a, attempt: $n, error: "boom", retryable: $r) { %s } }',
    "releaseTask": "mutation($id: ID!, $a: String, $n: Int) { releaseTask(id: $id, agent: $a, attempt: $n) { %s } }",
    "reviewTask": "mutation($id: ID!, $r: String!, $ok: Boolean!) "
    "{ reviewTask(id: $id, reviewer: $r, approved: $ok) { %s } }",
    "retryTask": "mutation($id: ID!) { retryTask(id: $id) { %s } }",
}


def _next(op: str) -> tuple[str, str]:
    return op, _NEXT[op] % TASK


ADVANCE = {status: _next for status in ("PENDING", "ASSIGNED", "RUNNING", "REVIEWING", "FAILED", "CANCELLED")}


class ApiMachine(RuleBasedStateMachine):
    """The whole API as one state machine; `services`, `schema` and `loop` are set on the
    class by the test before hypothesis runs it."""

    services: Services
    schema: Schema
    loop: asyncio.AbstractEventLoop
    outcomes: Counter[tuple[str, str]] = Counter()  # (operation, "ok" or error code), all runs

    def __init__(self) -> None:
        super().__init__()
        self.agents: list[str] = []
        self.projects: list[str] = []
        self.tasks: list[str] = []
        self.snapshot: invariants.Snapshot | None = None
        self.tolerated: set[int] = set()
        self.may_be_offline: bool = False
        self.last_op = ""
        self.mode: str | None = None  # "plain" or "hostile", drawn at the first argument of a step

    # --- plumbing ---------------------------------------------------------------------------

    def wait(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=120)

    def sql(self, query: str, **params: Any) -> list[Any]:
        async def go() -> list[Any]:
            async with self.services.read() as session:
                return list((await session.execute(text(query), params)).all())

        return self.wait(go())

    def hostile(self, data: st.DataObject) -> bool:
        """Whether this argument gets a hostile value: in one step of five, each argument
        does with even odds (a step full of valid arguments gets somewhere)."""
        if self.mode is None:
            self.mode = data.draw(st.sampled_from(["plain"] * 4 + ["hostile"]), label="step kind")
        return self.mode == "hostile" and data.draw(st.booleans(), label="hostile argument")

    def choose(self, data: st.DataObject, valid: Strategy, odd: Strategy, label: str) -> Strategy:
        return odd if self.hostile(data) else valid

    def pick(self, data: st.DataObject, valid: Strategy, odd: Strategy, label: str) -> Any:
        return data.draw(self.choose(data, valid, odd, label), label=label)

    def caller(self, data: st.DataObject) -> Caller:
        """The open service mostly; sometimes the admin key or an agent's token."""
        kind = data.draw(st.sampled_from(["open", "open", "open", "admin", "agent"]), label="caller")
        if kind == "admin":
            return Caller.admin()
        if kind == "agent" and self.agents:
            name = data.draw(st.sampled_from(self.agents), label="as agent")
            rows = self.sql("SELECT id FROM agents WHERE name = :n AND deleted_at IS NULL", n=name)
            if rows:
                return Caller(Role.AGENT, agent_id=rows[0][0], agent_name=name)
        return Caller.open()

    def run(self, op: str, document: str, variables: dict[str, Any], caller: Caller | None = None) -> Any:
        """Execute through the schema as a request would; any INTERNAL or code-less error
        (or an exception escaping the schema) fails the run."""
        self.last_op, self.mode = op, None
        context = Context(self.services, caller=caller or Caller.open())
        result = self.wait(self.schema.execute(document, variable_values=variables, context_value=context))
        codes = sorted({(e.extensions or {}).get("code", "?") for e in result.errors or []})
        self.outcomes[op, ",".join(codes) or "ok"] += 1
        for error in result.errors or []:
            code = (error.extensions or {}).get("code")
            if _retryable(error.extensions):
                continue  # the shared database server was out of connections: not the API's fault
            assert not any(leak in error.message for leak in ("[SQL", "Traceback")), (op, error.message)
            assert code in CODES, (
                f"{op} answered {code or 'no code'}: {error.message}\n"
                f"variables: {json.dumps(variables, default=str)[:2000]}\n"
                f"original: {error.original_error!r}"
            )
        self.invariants_hold()
        return result.data

    def held(self) -> list[tuple[str, str]]:
        """(task id, project id) of the tasks an agent holds now: the interesting targets."""
        rows = self.sql("SELECT id, project_id FROM tasks WHERE status IN ('ASSIGNED', 'RUNNING', 'REVIEWING')")
        return [(str(task), str(project)) for task, project in rows]

    def task_id(self, data: st.DataObject, label: str = "task") -> str:
        if self.hostile(data):
            return data.draw(bad_ids, label=label)
        held = self.held() if data.draw(st.booleans(), label=f"{label} held") else []
        return data.draw(st.sampled_from([t for t, _ in held] or self.tasks or ["1"]), label=label)

    def project_id(self, data: st.DataObject) -> str:
        if self.hostile(data):
            return data.draw(bad_ids, label="project")
        held = self.held() if data.draw(st.booleans(), label="project with held") else []
        return data.draw(st.sampled_from([p for _, p in held] or self.projects or ["1"]), label="project")

    def agent_name(self, data: st.DataObject, label: str = "agent") -> str:
        if self.agents and not self.hostile(data):
            return data.draw(st.sampled_from(self.agents), label=label)
        return data.draw(st.one_of(st.sampled_from(["ghost", "Ghost "]), odd_text), label=label)

    def holder(self, task_id: str) -> tuple[str | None, int | None]:
        """The task's assignee name and attempt, read from the database."""
        if not task_id.isdigit() or len(task_id) > 18:
            return None, None
        rows = self.sql(
            "SELECT a.name, t.attempt FROM tasks t LEFT JOIN agents a ON a.id = t.assignee_id WHERE t.id = :id",
            id=int(task_id),
        )
        return (rows[0][0], rows[0][1]) if rows else (None, None)

    def acting(self, data: st.DataObject, task_id: str) -> tuple[str | None, int | None, Caller]:
        """Who acts on a held task and with which attempt: usually its holder with the
        current attempt, else someone else, a stale attempt or a hostile value."""
        name, attempt = self.holder(task_id)
        if name is None or self.hostile(data):
            name = self.agent_name(data)
        how = data.draw(st.sampled_from(["none", "current", "current", "current", "stale"]), label="attempt kind")
        fence = {"none": None, "current": attempt, "stale": (attempt or 0) - 1}.get(how)
        if self.hostile(data):
            fence = data.draw(odd_ints, label="attempt")
        if data.draw(st.sampled_from([False] * 4 + [True]), label="as token") and name in self.agents:
            rows = self.sql("SELECT id FROM agents WHERE name = :n AND deleted_at IS NULL", n=name)
            if rows:
                return None, fence, Caller(Role.AGENT, agent_id=rows[0][0], agent_name=name)
        return name, fence, Caller.admin() if data.draw(st.booleans(), label="as admin") else Caller.open()

    # --- setup and checks -------------------------------------------------------------------

    @initialize(data=st.data())
    def fresh_world(self, data: st.DataObject) -> None:
        """An empty database, then a few agents, a project and some tasks (some depending on
        others), made through the API, so that every sequence has something to work on."""
        self.wait(empty_database(self.services))
        for index in range(data.draw(st.integers(1, 3), label="agents")):
            skills = data.draw(st.lists(st.sampled_from(SKILLS), unique=True), label="skills")
            limit = data.draw(st.integers(1, 3), label="limit")
            document = "mutation($i: RegisterAgentInput!) { registerAgent(input: $i) { agent { name } } }"
            self.run(
                "registerAgent",
                document,
                {"i": {"name": f"agent{index}", "skills": skills, "maxConcurrentTasks": limit}},
            )
            self.agents.append(f"agent{index}")
        out = self.run("createProject", 'mutation { createProject(input: {name: "p"}) { id } }', {})
        self.projects.append(out["createProject"]["id"])
        for _ in range(data.draw(st.integers(1, 5), label="tasks")):
            item = {
                "projectId": self.projects[0],
                "title": "t",
                "taskType": data.draw(st.sampled_from(TYPES), label="taskType"),
                "requiredSkills": data.draw(st.lists(st.sampled_from(SKILLS), max_size=1), label="requiredSkills"),
                "requiresReview": data.draw(st.booleans(), label="requiresReview"),
                "dependsOn": data.draw(
                    st.lists(st.sampled_from(self.tasks), max_size=1) if self.tasks else st.just([])
                ),
            }
            out = self.run(
                "createTask", f"mutation($i: CreateTaskInput!) {{ createTask(input: $i) {{ {TASK} }} }}", {"i": item}
            )
            self.tasks.append(out["createTask"]["id"])
        # One task already submitted for review, so that reviews are as common as claims.
        out = self.run(
            "createTask",
            f"mutation($i: CreateTaskInput!) {{ createTask(input: $i) {{ {TASK} }} }}",
            {"i": {"projectId": self.projects[0], "title": "to review", "taskType": "review", "assignee": "agent0"}},
        )
        if out:
            task = out["createTask"]["id"]
            self.tasks.append(task)
            self.run(*_next("startTask"), {"id": task, "a": "agent0", "n": 1})
            self.run(*_next("submitTask"), {"id": task, "a": "agent0", "n": 1, "r": None})

    def invariants_hold(self) -> None:
        """Checked after every operation (run, reaper ticks), not once per rule: a rule
        that walks a task through several steps gets each step checked."""
        exceeding = self.last_op in LIMIT_MAY_BE_EXCEEDED
        result = self.wait(
            invariants.check(
                self.services,
                previous=self.snapshot,
                tolerate_over_limit=EVERYONE if exceeding else self.tolerated,
                heartbeat_timeout=0 if self.may_be_offline else None,
            )
        )
        assert not result.violations, f"after {self.last_op}:\n" + "\n".join(result.violations)
        self.snapshot = result.snapshot
        # Still above the limit since a step that may exceed it: tolerated until it is back below.
        self.tolerated = result.over_limit if exceeding else result.over_limit & self.tolerated

    # --- agents -----------------------------------------------------------------------------

    @rule(data=st.data())
    def register_agent(self, data: st.DataObject) -> None:
        fresh = data.draw(st.integers(0, 3), label="new name") == 0 or not self.agents
        name = f"agent{len(self.agents)}" if fresh else self.agent_name(data)
        skills = self.pick(
            data, st.none() | st.lists(st.sampled_from(SKILLS)), st.lists(odd_text, max_size=3), "skills"
        )
        limit = self.pick(data, st.none() | st.integers(1, 3), odd_ints, "maxConcurrentTasks")
        capabilities = self.pick(data, st.none() | json_values, odd_json, "capabilities")
        out = self.run(
            "registerAgent",
            "mutation($input: RegisterAgentInput!) { registerAgent(input: $input) "
            "{ token agent { id name status maxConcurrentTasks currentTasks { id } stats { totalTasks } } } }",
            {"input": {"name": name, "skills": skills, "maxConcurrentTasks": limit, "capabilities": capabilities}},
            self.caller(data),
        )
        if out and out["registerAgent"]["agent"]["name"] not in self.agents:
            self.agents.append(out["registerAgent"]["agent"]["name"])

    @rule(data=st.data())
    def heartbeat(self, data: st.DataObject) -> None:
        self.run(
            "heartbeat",
            "mutation($a: String) { heartbeat(agent: $a) { name status } }",
            {"a": self.agent_name(data)},
            self.caller(data),
        )

    @rule(data=st.data(), hard=st.booleans())
    def unregister_agent(self, data: st.DataObject, hard: bool) -> None:
        self.run(
            "unregisterAgent",
            "mutation($n: String!, $h: Boolean) { unregisterAgent(name: $n, hard: $h) }",
            {"n": self.agent_name(data), "h": hard},
            self.caller(data),
        )

    @rule(data=st.data())
    def restore_agent(self, data: st.DataObject) -> None:
        self.run(
            "restoreAgent",
            "mutation($n: String!) { restoreAgent(name: $n) { name status currentTasks { id } } }",
            {"n": self.agent_name(data)},
            self.caller(data),
        )

    # --- projects ---------------------------------------------------------------------------

    @rule(data=st.data())
    def create_project(self, data: st.DataObject) -> None:
        name = self.pick(data, st.just("p"), odd_text, "name")
        status = data.draw(st.sampled_from(["ACTIVE", "ACTIVE", "ACTIVE", "PAUSED", "COMPLETED"]), label="status")
        out = self.run(
            "createProject",
            "mutation($i: CreateProjectInput!) { createProject(input: $i) { id } }",
            {"i": {"name": name, "status": status, "description": self.pick(data, st.none(), odd_text, "about")}},
            self.caller(data),
        )
        if out:
            self.projects.append(out["createProject"]["id"])

    @rule(data=st.data())
    def update_project(self, data: st.DataObject) -> None:
        changes = data.draw(
            st.fixed_dictionaries(
                {},
                optional={
                    "name": odd_text if self.hostile(data) else st.just("renamed"),
                    "status": st.sampled_from(["ACTIVE", "PAUSED", "COMPLETED", "CANCELLED"]),
                    "description": odd_text if self.hostile(data) else st.none() | st.just("about"),
                },
            ),
            label="changes",
        )
        self.run(
            "updateProject",
            "mutation($id: ID!, $i: UpdateProjectInput!) { updateProject(id: $id, input: $i) { id status } }",
            {"id": self.project_id(data), "i": changes},
            self.caller(data),
        )

    @rule(data=st.data(), hard=st.booleans())
    def delete_project(self, data: st.DataObject, hard: bool) -> None:
        self.run(
            "deleteProject",
            "mutation($id: ID!, $h: Boolean) { deleteProject(id: $id, hard: $h) }",
            {"id": self.project_id(data), "h": hard and data.draw(st.integers(0, 3)) == 0},
            self.caller(data),
        )

    @rule(data=st.data())
    def restore_project(self, data: st.DataObject) -> None:
        self.run(
            "restoreProject",
            "mutation($id: ID!) { restoreProject(id: $id) { id progress { total percentComplete } } }",
            {"id": self.project_id(data)},
            self.caller(data),
        )

    # --- tasks ------------------------------------------------------------------------------

    def new_task(self, data: st.DataObject) -> dict[str, Any]:
        item: dict[str, Any] = {
            "title": self.pick(data, st.just("t"), odd_text, "title"),
            "taskType": self.pick(data, st.sampled_from(TYPES), odd_text, "taskType"),
        }
        fields = {
            "requiredSkills": (st.lists(st.sampled_from(SKILLS), max_size=2), st.lists(odd_text, max_size=2)),
            "requiresReview": (st.booleans(), st.none()),
            "priority": (st.integers(1, 10), odd_ints),
            "maxAttempts": (st.integers(1, 3), odd_ints),
            "tags": (st.lists(st.sampled_from(["a", "b"]), max_size=2), st.lists(odd_text, max_size=3)),
            "availableAt": (datetimes, odd_datetimes),
            "dueAt": (datetimes, odd_datetimes),
            "timeoutMinutes": (st.integers(1, 60), odd_ints),
            "estimatedHours": (st.floats(0, 100), st.floats() | st.just(-1.0)),
            "description": (st.just("d"), odd_text),
            "idempotencyKey": (st.sampled_from(["k1", "k2"]), odd_text),
            "createdBy": (st.none() | st.just("boss"), odd_text),
        }
        for field in data.draw(st.sets(st.sampled_from(sorted(fields)), max_size=4), label="task fields"):
            valid, odd = fields[field]
            item[field] = self.pick(data, valid, odd, field)
        if self.agents and data.draw(st.sampled_from([False] * 4 + [True]), label="pre-assign"):
            item["assignee"] = self.agent_name(data, "assignee")
        if data.draw(st.booleans(), label="with deps"):
            item["dependsOn"] = [self.task_id(data, "dependsOn") for _ in range(data.draw(st.integers(1, 3)))]
        if self.tasks and data.draw(st.sampled_from([False] * 5 + [True]), label="with parent"):
            item["parentId"] = self.task_id(data, "parentId")
        return item

    @rule(data=st.data())
    def create_task(self, data: st.DataObject) -> None:
        item = {"projectId": self.project_id(data), **self.new_task(data)}
        out = self.run(
            "createTask",
            f"mutation($i: CreateTaskInput!) {{ createTask(input: $i) {{ {TASK} blockedBy {{ id }} }} }}",
            {"i": item},
            self.caller(data),
        )
        if out and out["createTask"]["id"] not in self.tasks:
            self.tasks.append(out["createTask"]["id"])

    @rule(data=st.data())
    def create_tasks(self, data: st.DataObject) -> None:
        count = data.draw(st.integers(0, 4), label="batch size")
        items = []
        for index in range(count):
            item = self.new_task(data)
            item["ref"] = self.pick(data, st.sampled_from([f"r{index}", f"r{index}", "dup"]), odd_text, "ref")
            if index and data.draw(st.booleans(), label="ref deps"):
                item["dependsOnRefs"] = data.draw(
                    st.lists(st.sampled_from([f"r{i}" for i in range(count)] + ["missing"]), max_size=2)
                )
            items.append(item)
        out = self.run(
            "createTasks",
            f"mutation($p: ID!, $t: [CreateTaskInput!]!) {{ createTasks(projectId: $p, tasks: $t) {{ {TASK} }} }}",
            {"p": self.project_id(data), "t": items},
            self.caller(data),
        )
        for task in (out or {}).get("createTasks") or []:
            if task["id"] not in self.tasks:
                self.tasks.append(task["id"])

    @rule(data=st.data())
    def update_task(self, data: st.DataObject) -> None:
        changes = data.draw(
            st.fixed_dictionaries(
                {},
                optional={
                    "title": self.choose(data, st.just("t2"), st.none() | odd_text, "title"),
                    "priority": self.choose(data, st.integers(1, 10), st.none() | odd_ints, "priority"),
                    "maxAttempts": self.choose(data, st.integers(1, 5), st.none() | odd_ints, "maxAttempts"),
                    "requiredSkills": st.none() | st.lists(st.sampled_from(SKILLS), max_size=2),
                    "tags": self.choose(data, st.none() | st.just(["a"]), st.lists(odd_text, max_size=3), "tags"),
                    "reviewer": self.choose(data, st.none() | st.just("agent1"), odd_text, "reviewer"),
                    "availableAt": self.choose(data, datetimes, odd_datetimes, "availableAt"),
                    "timeoutMinutes": self.choose(data, st.none() | st.integers(1, 60), odd_ints, "timeoutMinutes"),
                },
            ),
            label="changes",
        )
        self.run(
            "updateTask",
            f"mutation($id: ID!, $i: UpdateTaskInput!) {{ updateTask(id: $id, input: $i) {{ {TASK} }} }}",
            {"id": self.task_id(data), "i": changes},
            self.caller(data),
        )

    @rule(data=st.data(), remove=st.booleans())
    def dependency(self, data: st.DataObject, remove: bool) -> None:
        name = "removeDependency" if remove else "addDependency"
        self.run(
            name,
            f"mutation($t: ID!, $d: ID!) {{ {name}(taskId: $t, dependsOn: $d) {{ {TASK} dependencies {{ id }} }} }}",
            {"t": self.task_id(data), "d": self.task_id(data, "dependsOn")},
            self.caller(data),
        )

    @rule(data=st.data(), hard=st.booleans())
    def delete_task(self, data: st.DataObject, hard: bool) -> None:
        self.run(
            "deleteTask",
            "mutation($id: ID!, $h: Boolean) { deleteTask(id: $id, hard: $h) }",
            {"id": self.task_id(data), "h": hard and data.draw(st.integers(0, 2)) == 0},
            self.caller(data),
        )

    @rule(data=st.data())
    def restore_task(self, data: st.DataObject) -> None:
        self.run(
            "restoreTask",
            f"mutation($id: ID!) {{ restoreTask(id: $id) {{ {TASK} }} }}",
            {"id": self.task_id(data)},
            self.caller(data),
        )

    # --- the lifecycle ----------------------------------------------------------------------

    @rule(data=st.data())
    def claim_task(self, data: st.DataObject) -> None:
        caller = self.caller(data)
        agent = caller.agent_name if caller.is_agent and not self.hostile(data) else self.agent_name(data)
        self.run(
            "claimTask",
            f"mutation($id: ID!, $a: String, $k: String) {{ claimTask(id: $id, agent: $a, idempotencyKey: $k) "
            f"{{ {TASK} }} }}",
            {
                "id": self.task_id(data),
                "a": agent,
                "k": data.draw(st.none() | st.sampled_from(["c1", "c2"]), label="key"),
            },
            caller,
        )

    @rule(data=st.data())
    def claim_next_task(self, data: st.DataObject) -> None:
        caller = self.caller(data)
        agent = caller.agent_name if caller.is_agent and not self.hostile(data) else self.agent_name(data)
        self.run(
            "claimNextTask",
            f"mutation($a: String, $p: ID, $t: [String!]) {{ claimNextTask(agent: $a, projectId: $p, tags: $t) "
            f"{{ {TASK} }} }}",
            {
                "a": agent,
                "p": self.project_id(data) if data.draw(st.booleans(), label="in project") else None,
                "t": self.pick(data, st.none() | st.lists(st.sampled_from(["a", "b"])), st.lists(odd_text), "tags"),
            },
            caller,
        )

    @rule(data=st.data())
    def start_task(self, data: st.DataObject) -> None:
        task = self.task_id(data)
        agent, attempt, caller = self.acting(data, task)
        self.run(
            "startTask",
            f"mutation($id: ID!, $a: String, $n: Int) {{ startTask(id: $id, agent: $a, attempt: $n) {{ {TASK} }} }}",
            {"id": task, "a": agent, "n": attempt},
            caller,
        )

    @rule(data=st.data())
    def report_progress(self, data: st.DataObject) -> None:
        task = self.task_id(data)
        agent, attempt, caller = self.acting(data, task)
        self.run(
            "reportProgress",
            f"mutation($id: ID!, $a: String, $p: Int!, $m: String, $n: Int) "
            f"{{ reportProgress(id: $id, agent: $a, progress: $p, message: $m, attempt: $n) {{ {TASK} progress }} }}",
            {
                "id": task,
                "a": agent,
                "p": self.pick(data, st.integers(0, 100), odd_ints, "progress"),
                "m": self.pick(data, st.none() | st.just("halfway"), odd_text, "message"),
                "n": attempt,
            },
            caller,
        )

    @rule(data=st.data())
    def submit_task(self, data: st.DataObject) -> None:
        task = self.task_id(data)
        agent, attempt, caller = self.acting(data, task)
        self.run(
            "submitTask",
            f"mutation($id: ID!, $a: String, $r: JSON, $s: String, $n: Int, $k: String) "
            f"{{ submitTask(id: $id, agent: $a, result: $r, summary: $s, attempt: $n, idempotencyKey: $k) "
            f"{{ {TASK} result }} }}",
            {
                "id": task,
                "a": agent,
                "r": self.pick(data, json_values, odd_json, "result"),
                "s": self.pick(data, st.none() | st.just("done"), odd_text, "summary"),
                "n": attempt,
                "k": data.draw(st.none() | st.sampled_from(["s1", "s2"]), label="key"),
            },
            caller,
        )

    @rule(data=st.data())
    def release_task(self, data: st.DataObject) -> None:
        task = self.task_id(data)
        agent, attempt, caller = self.acting(data, task)
        if data.draw(st.sampled_from([False] * 4 + [True]), label="admin release"):
            agent, caller = None, Caller.admin()
        self.run(
            "releaseTask",
            f"mutation($id: ID!, $a: String, $r: String, $n: Int) "
            f"{{ releaseTask(id: $id, agent: $a, reason: $r, attempt: $n) {{ {TASK} }} }}",
            {"id": task, "a": agent, "r": self.pick(data, st.none(), odd_text, "reason"), "n": attempt},
            caller,
        )

    @rule(data=st.data())
    def fail_task(self, data: st.DataObject) -> None:
        task = self.task_id(data)
        agent, attempt, caller = self.acting(data, task)
        self.run(
            "failTask",
            f"mutation($id: ID!, $a: String, $e: String!, $r: Boolean, $n: Int) "
            f"{{ failTask(id: $id, agent: $a, error: $e, retryable: $r, attempt: $n) {{ {TASK} lastError }} }}",
            {
                "id": task,
                "a": agent,
                "e": self.pick(data, st.just("boom"), odd_text, "error"),
                "r": data.draw(st.none() | st.booleans(), label="retryable"),
                "n": attempt,
            },
            caller,
        )

    @rule(data=st.data(), approved=st.booleans())
    def review_task(self, data: st.DataObject, approved: bool) -> None:
        task = self.task_id(data)
        holder, _ = self.holder(task)
        reviewer = self.agent_name(data, "reviewer")
        if reviewer == holder and data.draw(st.sampled_from([True] * 3 + [False]), label="not self review"):
            reviewer = "boss"
        caller = self.caller(data)
        if caller.is_agent and data.draw(st.booleans(), label="review as token"):
            reviewer = caller.agent_name or reviewer
        self.run(
            "reviewTask",
            f"mutation($id: ID!, $r: String!, $ok: Boolean!, $f: String, $k: String) "
            f"{{ reviewTask(id: $id, reviewer: $r, approved: $ok, feedback: $f, idempotencyKey: $k) "
            f"{{ {TASK} feedback }} }}",
            {
                "id": task,
                "r": reviewer,
                "ok": approved,
                "f": self.pick(data, st.none() | st.just("redo"), odd_text, "feedback"),
                "k": data.draw(st.none() | st.sampled_from(["v1", "v2"]), label="key"),
            },
            caller,
        )

    @rule(data=st.data())
    def retry_task(self, data: st.DataObject) -> None:
        self.run(
            "retryTask",
            f"mutation($id: ID!, $k: String) {{ retryTask(id: $id, idempotencyKey: $k) {{ {TASK} maxAttempts }} }}",
            {"id": self.task_id(data), "k": data.draw(st.none() | st.sampled_from(["y1", "y2"]), label="key")},
            self.caller(data),
        )

    @rule(data=st.data())
    def cancel_task(self, data: st.DataObject) -> None:
        self.run(
            "cancelTask",
            f"mutation($id: ID!, $r: String) {{ cancelTask(id: $id, reason: $r) {{ {TASK} }} }}",
            {"id": self.task_id(data), "r": self.pick(data, st.none(), odd_text, "reason")},
            self.caller(data),
        )

    def able_agents(self, required: Any) -> list[str]:
        """Live agents that have every skill in `required` (JSON as stored)."""
        need = set(_json(required))
        rows = self.sql("SELECT name, skills FROM agents WHERE deleted_at IS NULL ORDER BY id")
        return [name for name, skills in rows if need <= set(_json(skills))]

    def advance(self, data: st.DataObject) -> None:
        """Move a task up to four steps along its lifecycle with valid arguments (the right
        agent, the current attempt), so that sequences reach every state, not only refusals."""
        movable = self.sql(
            "SELECT id FROM tasks WHERE deleted_at IS NULL AND status <> 'COMPLETED' "
            "AND NOT (status = 'PENDING' AND unmet_dependencies > 0) ORDER BY id"
        )
        if not movable:
            return
        task = str(data.draw(st.sampled_from([row[0] for row in movable]), label="task"))
        for _ in range(data.draw(st.integers(1, 4), label="steps")):
            rows = self.sql(
                "SELECT t.status, a.name, t.attempt, t.reviewer, t.required_skills FROM tasks t "
                "LEFT JOIN agents a ON a.id = t.assignee_id WHERE t.id = :id AND t.deleted_at IS NULL",
                id=int(task),
            )
            if not rows:
                return
            status, holder, attempt, reviewer, required = rows[0]
            mine = {"id": task, "a": holder, "n": attempt}
            step = ADVANCE.get(status)
            if step is None:
                return
            if status == "PENDING":
                able = self.able_agents(required)
                if not able:
                    return
                self.run(*step("claimTask"), {"id": task, "a": data.draw(st.sampled_from(able), label="claimer")})
            elif status == "ASSIGNED":
                self.run(*step("startTask"), mine)
            elif status == "RUNNING":
                op = data.draw(st.sampled_from(["submitTask"] * 3 + ["reportProgress", "failTask", "releaseTask"]))
                extra = {"r": data.draw(json_values, label="result")} if op == "submitTask" else {}
                if op == "failTask":
                    extra = {"r": data.draw(st.booleans(), label="retryable")}
                self.run(*step(op), {**mine, **extra})
            elif status == "REVIEWING":
                others = [a for a in self.agents if a != holder] or ["boss"]
                who = reviewer or data.draw(st.sampled_from(others), label="reviewer")
                self.run(*step("reviewTask"), {"id": task, "r": who, "ok": data.draw(st.booleans(), label="approved")})
            else:
                self.run(*step("retryTask"), {"id": task})

    # Three rules for the same walk: rules are drawn evenly, and most of the others refuse.
    advance_a = rule(data=st.data())(advance)
    advance_b = rule(data=st.data())(advance)
    advance_c = rule(data=st.data())(advance)

    @rule(minutes=st.sampled_from([0, 2, 200, 60 * 24 * 40]))
    def reaper_tick(self, minutes: int) -> None:
        """The reaper with its clock `minutes` ahead: expired leases, timeouts, purges."""
        self.last_op, self.mode = f"reaper tick +{minutes} min", None
        now = datetime.now(UTC) + timedelta(minutes=minutes)
        self.wait(Reaper(self.services).tick(now))
        if minutes * 60 > self.services.settings.heartbeat_timeout_seconds:
            self.may_be_offline = True
        self.invariants_hold()

    # --- queries ----------------------------------------------------------------------------

    @rule(data=st.data())
    def query_everything(self, data: st.DataObject) -> None:
        status = data.draw(st.none() | st.lists(st.sampled_from(["PENDING", "ASSIGNED", "REVIEWING", "FAILED"])))
        self.run(
            "queries",
            """query($id: ID!, $p: ID!, $a: String!, $first: Int, $after: String, $f: TaskFilter, $ev: ID) {
              task(id: $id) { id status ready blockedBy { id } dependencies { id } dependents { id }
                subtasks { id } parent { id } assignee { name status } project { id name }
                events(first: $first) { id type fromStatus toStatus } result }
              tasks(filter: $f, first: $first, after: $after) { totalCount pageInfo { hasNextPage endCursor }
                nodes { id status assignee { name } } }
              project(id: $p) { id status progress { total completed percentComplete }
                tasks(first: $first) { totalCount nodes { id } } }
              projects(includeDeleted: true) { id deletedAt }
              agent(name: $a) { name status currentTasks { id status } stats { totalTasks completedTasks
                failedTasks successRate } }
              agents(includeDeleted: true) { name status deletedAt }
              availableTasks(agent: $a, projectId: $p, first: $first) { id }
              events(after: $ev, taskId: $id, first: $first) { id type }
              dashboardStats { tasks { total ready running } agents { total busy } deleted { tasks }
                recentEvents { id } }
            }""",
            {
                "id": self.task_id(data),
                "p": self.project_id(data),
                "a": self.agent_name(data),
                "first": self.pick(data, st.none() | st.integers(0, 10), odd_ints, "first"),
                "after": self.pick(data, st.none(), bad_ids | st.text(max_size=12), "after"),
                "ev": self.pick(data, st.none() | st.just("0"), bad_ids, "events after"),
                "f": {
                    "status": status,
                    "assignee": self.agent_name(data) if data.draw(st.booleans(), label="by assignee") else None,
                    "search": self.pick(data, st.none() | st.just("t"), odd_text, "search"),
                    "tags": self.pick(data, st.none() | st.just(["a"]), st.lists(odd_text, max_size=2), "tags"),
                    "readyOnly": data.draw(st.none() | st.booleans()),
                    "includeDeleted": data.draw(st.booleans()),
                    "projectId": self.project_id(data) if data.draw(st.booleans(), label="by project") else None,
                },
            },
            self.caller(data),
        )


@pytest.mark.timeout(600)
async def test_every_sequence_keeps_the_invariants(services: Services, schema: Schema) -> None:
    """FUZZ_EXAMPLES sequences of up to FUZZ_STEPS random operations each."""
    ApiMachine.services = services
    ApiMachine.schema = schema
    ApiMachine.loop = asyncio.get_running_loop()
    machine = ApiMachine.TestCase
    machine.settings = settings(
        max_examples=EXAMPLES,
        stateful_step_count=STEPS,
        deadline=None,
        database=None,
        derandomize=DERANDOMIZE,
        suppress_health_check=list(HealthCheck),
        print_blob=True,
        phases=PHASES,
    )
    ApiMachine.outcomes.clear()
    await asyncio.to_thread(machine().runTest)
    outcomes = ApiMachine.outcomes
    print(f"{sum(outcomes.values())} operations:")
    for (op, outcome), count in sorted(outcomes.items()):
        print(f"  {op:16} {outcome:24} {count}")
    ok = {op for (op, outcome) in outcomes if outcome == "ok"}
    assert ok >= {"claimTask", "claimNextTask", "startTask", "submitTask", "reviewTask", "createTask"}, ok
