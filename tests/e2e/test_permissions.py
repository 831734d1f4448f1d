"""The README's permission matrix, cell by cell, over HTTP and over WebSocket, against a real
server with API_KEY set: the admin key, agent A (the owner: creator, assignee, the agent
itself), agent B (another agent) and no credential.

Every cell runs on a world of its own (its own agents, project and tasks), so cells cannot
disturb each other. A refused call must change nothing: the project's tasks, agents and
event log are compared before and after, and A's token must still work.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.e2e.conftest import Server, running_server
from tests.e2e.security_helpers import (
    ADMIN_KEY,
    LEGACY_WS,
    TRANSPORT_WS,
    Outcome,
    admin_headers,
    bearer,
    close_clients,
    http_operation,
    ws_operation,
)

pytestmark = pytest.mark.timeout(600)

OK = "OK"
FORBIDDEN = "FORBIDDEN"
BAD = "BAD_USER_INPUT"
UNAUTHENTICATED = "UNAUTHENTICATED"
CALLERS = ("admin", "A", "B", "none")


@pytest.fixture(scope="module")
async def server(e2e_pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Server]:
    async with running_server(e2e_pg_url, tmp_path_factory.mktemp("perm"), API_KEY=ADMIN_KEY) as running:
        yield running
    await close_clients()


@dataclass
class World:
    """Agents A and B, A's project, and A's tasks in every state the matrix needs."""

    server: Server
    a: str
    b: str
    tokens: dict[str, str]
    project: str
    tasks: dict[str, str] = field(default_factory=dict)

    def headers(self, caller: str) -> dict[str, str]:
        if caller == "admin":
            return admin_headers()
        if caller == "none":
            return {}
        return bearer(self.tokens[caller])

    def payload(self, caller: str) -> dict[str, Any]:
        return self.headers(caller)

    async def as_(self, caller: str, query: str, **variables: Any) -> Any:
        outcome = await http_operation(self.server, self.headers(caller), query, variables)
        assert outcome.ok, f"setup step failed ({outcome.code}: {outcome.message}): {query}"
        return outcome.data


async def build_world(server: Server) -> World:
    tag = uuid.uuid4().hex[:8]
    a, b = f"a-{tag}", f"b-{tag}"
    world = World(server, a, b, {}, "")
    for caller, name in (("A", a), ("B", b)):
        data = await world.as_("admin", "mutation($n: String!) { registerAgent(input: {name: $n}) { token } }", n=name)
        world.tokens[caller] = data["registerAgent"]["token"]
    data = await world.as_("A", 'mutation { createProject(input: {name: "mine"}) { id } }')
    world.project = data["createProject"]["id"]
    titles = ["free", "held", "review", "failed", "dep_a", "dep_b"]
    items = [{"ref": t, "title": t, "taskType": "research"} for t in titles]
    items[-1]["dependsOnRefs"] = ["dep_a"]
    data = await world.as_(
        "A",
        "mutation($p: ID!, $t: [CreateTaskInput!]!) { createTasks(projectId: $p, tasks: $t) { id title } }",
        p=world.project,
        t=items,
    )
    world.tasks = {t["title"]: t["id"] for t in data["createTasks"]}
    for name in ("held", "review", "failed"):
        await world.as_("A", "mutation($id: ID!) { claimTask(id: $id) { id } }", id=world.tasks[name])
    await world.as_("A", "mutation($id: ID!) { startTask(id: $id) { id } }", id=world.tasks["review"])
    await world.as_("A", "mutation($id: ID!) { submitTask(id: $id, result: 1) { id } }", id=world.tasks["review"])
    await world.as_(
        "A", 'mutation($id: ID!) { failTask(id: $id, error: "x", retryable: false) { id } }', id=world.tasks["failed"]
    )
    return world


SNAPSHOT = """query($p: ID!) {
  project(id: $p) { name status deletedAt }
  tasks(filter: {projectId: $p, includeDeleted: true}, first: 100) {
    nodes { id title status attempt progress deletedAt assignee { name } dependencies { id } priority }
  }
  agents(includeDeleted: true) { name status deletedAt role }
  events(projectId: $p, first: 500) { id }
}"""


async def snapshot(world: World) -> Any:
    data = await world.as_("admin", SNAPSHOT, p=world.project)
    data["agents"] = [a for a in data["agents"] if a["name"] in (world.a, world.b)]
    data["a_token_works"] = (await http_operation(world.server, world.headers("A"), "{ __typename }")).ok
    return data


# A row: the operation, its variables for a caller (who may need to name the agent it acts
# as), an optional preparation by the admin, and the expected outcome per caller.
Vars = Callable[[World, str], dict[str, Any]]


@dataclass
class Row:
    name: str
    query: str
    variables: Vars
    expect: dict[str, str]
    prepare: Callable[[World], Awaitable[None]] | None = None
    subscription: bool = False

    @property
    def id(self) -> str:
        return self.name


def everyone(**_: Any) -> dict[str, str]:
    return {"admin": OK, "A": OK, "B": OK, "none": UNAUTHENTICATED}


def owner_only(**_: Any) -> dict[str, str]:
    return {"admin": OK, "A": OK, "B": FORBIDDEN, "none": UNAUTHENTICATED}


def admin_only(**_: Any) -> dict[str, str]:
    return {"admin": OK, "A": FORBIDDEN, "B": FORBIDDEN, "none": UNAUTHENTICATED}


def as_a(world: World, caller: str) -> str | None:
    """The `agent` argument for acting as A: the admin must name it, agents omit it (so B
    acts as itself)."""
    return world.a if caller == "admin" else None


def task(name: str, **extra: Any) -> Vars:
    return lambda w, c: {"id": w.tasks[name], **extra}


def task_as_a(name: str, **extra: Any) -> Vars:
    return lambda w, c: {"id": w.tasks[name], "agent": as_a(w, c), **extra}


def project_vars(w: World, c: str) -> dict[str, Any]:
    return {"id": w.project}


async def soft_delete_project(world: World) -> None:
    await world.as_("admin", "mutation($id: ID!) { deleteProject(id: $id) }", id=world.project)


async def soft_delete_free(world: World) -> None:
    await world.as_("admin", "mutation($id: ID!) { deleteTask(id: $id) }", id=world.tasks["free"])


ROWS = [
    # Queries: any credential.
    Row("task", "query($id: ID!) { task(id: $id) { id status } }", task("free"), everyone()),
    Row("tasks", "query { tasks { totalCount } }", lambda w, c: {}, everyone()),
    Row(
        "availableTasks",
        "query($a: String) { availableTasks(agent: $a) { id } }",
        lambda w, c: {"a": w.a},
        everyone(),
    ),
    Row("project", "query($id: ID!) { project(id: $id) { id } }", project_vars, everyone()),
    Row("projects", "query { projects { id } }", lambda w, c: {}, everyone()),
    Row("agent", "query($n: String!) { agent(name: $n) { name } }", lambda w, c: {"n": w.a}, everyone()),
    Row("agents", "query { agents { name } }", lambda w, c: {}, everyone()),
    Row("events", "query { events(first: 1) { id } }", lambda w, c: {}, everyone()),
    Row("dashboardStats", "query { dashboardStats { tasks { total } } }", lambda w, c: {}, everyone()),
    # Projects: anyone creates; the creator (A) or the admin changes, deletes, restores.
    Row("createProject", 'mutation { createProject(input: {name: "p"}) { id } }', lambda w, c: {}, everyone()),
    Row(
        "updateProject",
        'mutation($id: ID!) { updateProject(id: $id, input: {name: "renamed"}) { id } }',
        project_vars,
        owner_only(),
    ),
    Row("deleteProject", "mutation($id: ID!) { deleteProject(id: $id) }", project_vars, owner_only()),
    Row("deleteProject hard", "mutation($id: ID!) { deleteProject(id: $id, hard: true) }", project_vars, admin_only()),
    Row(
        "restoreProject",
        "mutation($id: ID!) { restoreProject(id: $id) { id } }",
        project_vars,
        owner_only(),
        prepare=soft_delete_project,
    ),
    # Tasks: anyone plans; the creator (A) or the admin deletes and restores.
    Row(
        "createTask",
        'mutation($p: ID!) { createTask(input: {projectId: $p, title: "t", taskType: "x"}) { id } }',
        lambda w, c: {"p": w.project},
        everyone(),
    ),
    Row(
        "createTask createdBy A",
        'mutation($p: ID!, $by: String) { createTask(input: {projectId: $p, title: "t", taskType: "x", '
        "createdBy: $by}) { id } }",
        lambda w, c: {"p": w.project, "by": w.a},
        owner_only(),
    ),
    Row(
        "createTasks",
        'mutation($p: ID!) { createTasks(projectId: $p, tasks: [{title: "t", taskType: "x"}]) { id } }',
        lambda w, c: {"p": w.project},
        everyone(),
    ),
    Row(
        "updateTask",
        "mutation($id: ID!) { updateTask(id: $id, input: {priority: 9}) { id } }",
        task("free"),
        everyone(),
    ),
    Row(
        "addDependency",
        "mutation($t: ID!, $d: ID!) { addDependency(taskId: $t, dependsOn: $d) { id } }",
        lambda w, c: {"t": w.tasks["free"], "d": w.tasks["dep_a"]},
        everyone(),
    ),
    Row(
        "removeDependency",
        "mutation($t: ID!, $d: ID!) { removeDependency(taskId: $t, dependsOn: $d) { id } }",
        lambda w, c: {"t": w.tasks["dep_b"], "d": w.tasks["dep_a"]},
        everyone(),
    ),
    Row("deleteTask", "mutation($id: ID!) { deleteTask(id: $id) }", task("free"), owner_only()),
    Row("deleteTask hard", "mutation($id: ID!) { deleteTask(id: $id, hard: true) }", task("free"), admin_only()),
    Row(
        "restoreTask",
        "mutation($id: ID!) { restoreTask(id: $id) { id } }",
        task("free"),
        owner_only(),
        prepare=soft_delete_free,
    ),
    # Agents: an agent manages only itself; new agents come from the admin.
    Row(
        "registerAgent self",
        'mutation($n: String!) { registerAgent(input: {name: $n, role: "r"}) { token } }',
        lambda w, c: {"n": w.a},
        owner_only(),
    ),
    Row(
        "registerAgent new",
        "mutation($n: String!) { registerAgent(input: {name: $n}) { token } }",
        lambda w, c: {"n": "new-" + w.a},
        admin_only(),
    ),
    Row(
        "heartbeat as A",
        "mutation($a: String) { heartbeat(agent: $a) { name } }",
        lambda w, c: {"a": w.a},
        owner_only(),
    ),
    Row(
        "heartbeat unnamed",
        "mutation { heartbeat { name } }",
        lambda w, c: {},
        {"admin": BAD, "A": OK, "B": OK, "none": UNAUTHENTICATED},
    ),
    Row(
        "unregisterAgent", "mutation($n: String!) { unregisterAgent(name: $n) }", lambda w, c: {"n": w.a}, owner_only()
    ),
    Row(
        "unregisterAgent hard",
        "mutation($n: String!) { unregisterAgent(name: $n, hard: true) }",
        lambda w, c: {"n": w.a},
        admin_only(),
    ),
    Row(
        "restoreAgent",
        "mutation($n: String!) { restoreAgent(name: $n) { name } }",
        lambda w, c: {"n": w.a},
        owner_only(),
    ),
    # The lifecycle: the assignee (A) acts; B acting as itself is not the assignee.
    Row(
        "claimTask as A",
        "mutation($id: ID!, $agent: String) { claimTask(id: $id, agent: $agent) { id } }",
        lambda w, c: {"id": w.tasks["free"], "agent": w.a},
        owner_only(),
    ),
    Row(
        "claimNextTask as A",
        "mutation($agent: String) { claimNextTask(agent: $agent) { id } }",
        lambda w, c: {"agent": w.a},
        owner_only(),
    ),
    Row(
        "startTask",
        "mutation($id: ID!, $agent: String) { startTask(id: $id, agent: $agent) { id } }",
        task_as_a("held"),
        owner_only(),
    ),
    Row(
        "reportProgress",
        "mutation($id: ID!, $agent: String) { reportProgress(id: $id, agent: $agent, progress: 50) { id } }",
        task_as_a("held"),
        owner_only(),
    ),
    Row(
        "submitTask",
        "mutation($id: ID!, $agent: String) { submitTask(id: $id, agent: $agent, result: 1) { id } }",
        task_as_a("held"),
        owner_only(),
    ),
    Row(
        "releaseTask",
        "mutation($id: ID!, $agent: String) { releaseTask(id: $id, agent: $agent) { id } }",
        task_as_a("held"),
        owner_only(),
    ),
    Row(
        "failTask",
        'mutation($id: ID!, $agent: String) { failTask(id: $id, agent: $agent, error: "e") { id } }',
        task_as_a("held"),
        owner_only(),
    ),
    # Review: anyone but the assignee, each agent only as itself.
    Row(
        "reviewTask as itself",
        "mutation($id: ID!, $r: String!) { reviewTask(id: $id, reviewer: $r, approved: true) { id } }",
        lambda w, c: {"id": w.tasks["review"], "r": {"admin": "auditor", "A": w.a, "B": w.b}.get(c, "x")},
        {"admin": OK, "A": FORBIDDEN, "B": OK, "none": UNAUTHENTICATED},
    ),
    Row(
        "reviewTask as someone else",
        'mutation($id: ID!) { reviewTask(id: $id, reviewer: "auditor", approved: false) { id } }',
        task("review"),
        admin_only(),
    ),
    Row("retryTask", "mutation($id: ID!) { retryTask(id: $id) { id } }", task("failed"), everyone()),
    Row("cancelTask held", "mutation($id: ID!) { cancelTask(id: $id) { id } }", task("held"), owner_only()),
    Row("cancelTask free", "mutation($id: ID!) { cancelTask(id: $id) { id } }", task("free"), everyone()),
]

SUBSCRIPTIONS = [
    Row(
        "taskEvents",
        'subscription($p: ID) { taskEvents(after: "0", projectId: $p) { id type } }',
        lambda w, c: {"p": w.project},
        everyone(),
        subscription=True,
    ),
    Row(
        "agentPresence",
        "subscription($n: String) { agentPresence(name: $n) { status } }",
        lambda w, c: {"n": w.a},
        everyone(),
        subscription=True,
    ),
    Row(
        "dashboardStats sub",
        "subscription { dashboardStats { tasks { total } } }",
        lambda w, c: {},
        everyone(),
        subscription=True,
    ),
    Row(
        "taskChanged",
        "subscription($p: ID) { taskChanged(projectId: $p) { id status } }",
        lambda w, c: {"p": w.project},
        everyone(),
        subscription=True,
    ),
]


async def run_cell(row: Row, caller: str, transport: str, world: World) -> Outcome:
    variables = row.variables(world, caller)
    if transport == "http":
        return await http_operation(world.server, world.headers(caller), row.query, variables)

    async def touch_a_task() -> None:
        if row.name == "taskChanged":  # it speaks only after a change
            await world.as_(
                "admin",
                "mutation($id: ID!) { updateTask(id: $id, input: {priority: 2}) { id } }",
                id=world.tasks["free"],
            )

    return await ws_operation(world.server, world.payload(caller), row.query, variables, before_results=touch_a_task)


def check(outcome: Outcome, expected: str, *, transport: str, caller: str) -> None:
    if expected == OK:
        assert outcome.ok, f"expected success, got {outcome.code}: {outcome.message}"
    elif caller == "none" and transport == "ws":
        # No credential at connection_init: graphql-transport-ws closes the socket with 4403.
        assert (outcome.code, outcome.status) == ("CLOSED", 4403), outcome
    else:
        assert outcome.code == expected, f"expected {expected}, got {outcome.code}: {outcome.message}"
        if transport == "http":
            assert outcome.status == (401 if expected == UNAUTHENTICATED else 200), outcome


@pytest.mark.parametrize("transport", ["http", "ws"])
@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize("row", ROWS, ids=lambda r: r.id)
async def test_operation_cell(server: Server, row: Row, caller: str, transport: str) -> None:
    world = await build_world(server)
    if row.prepare is not None:
        await row.prepare(world)
    before = await snapshot(world)

    outcome = await run_cell(row, caller, transport, world)

    expected = row.expect[caller]
    check(outcome, expected, transport=transport, caller=caller)
    if expected != OK:
        assert await snapshot(world) == before, "a refused call changed something"


@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize("row", SUBSCRIPTIONS, ids=lambda r: r.id)
async def test_subscription_cell(server: Server, row: Row, caller: str) -> None:
    world = await build_world(server)

    outcome = await run_cell(row, caller, "ws", world)

    check(outcome, row.expect[caller], transport="ws", caller=caller)


class TestWebSocketCredentials:
    """The other ways a WebSocket carries (or lacks) a credential."""

    async def test_credentials_in_the_upgrade_headers(self, server: Server) -> None:
        world = await build_world(server)
        outcome = await ws_operation(server, {}, "{ agents { name } }", headers=bearer(world.tokens["A"]))
        assert outcome.ok, outcome

    async def test_a_wrong_token_closes_with_4403(self, server: Server) -> None:
        outcome = await ws_operation(server, bearer("tsa_not-a-token"), "{ agents { name } }")
        assert (outcome.code, outcome.status) == ("CLOSED", 4403)

    async def test_legacy_protocol_without_a_credential_gets_connection_error(self, server: Server) -> None:
        outcome = await ws_operation(server, {}, "{ agents { name } }", protocol=LEGACY_WS)
        assert outcome.code == UNAUTHENTICATED

    async def test_legacy_protocol_with_a_token(self, server: Server) -> None:
        world = await build_world(server)
        outcome = await ws_operation(
            server,
            {"headers": bearer(world.tokens["B"])},
            "subscription { dashboardStats { agents { total } } }",
            protocol=LEGACY_WS,
        )
        assert outcome.ok, outcome

    async def test_a_query_over_the_legacy_protocol_is_refused_cleanly(self, server: Server) -> None:
        outcome = await ws_operation(server, admin_headers(), "{ agents { name } }", protocol=LEGACY_WS)
        assert outcome.code == BAD, outcome
        assert "graphql-ws" in (outcome.message or "")

    async def test_an_agent_token_acts_as_its_agent_over_websocket(self, server: Server) -> None:
        world = await build_world(server)
        outcome = await ws_operation(
            server, world.payload("B"), "mutation { heartbeat { name } }", protocol=TRANSPORT_WS
        )
        assert outcome.data == {"heartbeat": {"name": world.b}}
