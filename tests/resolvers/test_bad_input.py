"""Bad input gets one clear error with the right code and changes nothing; unexpected
failures are masked; over-complex queries are refused."""

from __future__ import annotations

import re
from typing import Any

import pytest

from task_service.db import stats as db_stats
from task_service.settings import Settings
from tests import factories as f

SNAPSHOT = """{
  tasks(filter: {includeDeleted: true}, first: 500) {
    totalCount
    nodes { id title description priority status progress attempt deletedAt updatedAt availableAt
            assignee { name } dependencies { id } }
  }
  projects(includeDeleted: true) { id name description status deletedAt updatedAt }
  agents(includeDeleted: true) { name role status deletedAt }
  events(first: 500) { id type }
}"""

CREATE_TASK = "mutation($input: CreateTaskInput!) { createTask(input: $input) { id } }"
CREATE_TASKS = "mutation($pid: ID!, $tasks: [CreateTaskInput!]!) { createTasks(projectId: $pid, tasks: $tasks) { id } }"
# The `schema` fixture is built from the default settings.
MAX_DEPTH = Settings().max_query_depth
MAX_ALIASES = Settings().max_aliases
MAX_TOKENS = Settings().max_tokens
LEAKS = re.compile(r"Traceback|sqlalchemy|SELECT|INSERT|UPDATE |File \"|/work/|\.py\b|asyncpg|sqlite", re.IGNORECASE)


async def snapshot(gql: Any) -> dict[str, Any]:
    return await gql.execute(SNAPSHOT)


def assert_clean(failure: Any) -> None:
    """One error, with a message that gives nothing of the implementation away."""
    assert len(failure.errors) == 1, failure.errors
    error = failure.errors[0]
    text = f"{error.message} {error.extensions}"
    assert not LEAKS.search(text), text
    assert "stacktrace" not in (error.extensions or {})


async def fails_cleanly(gql: Any, code: str, query: str, **variables: Any) -> str:
    """Run `query`, expect `code`, check the message is clean and that nothing changed."""
    before = await snapshot(gql)
    failure = await gql.error(query, **variables)
    assert failure.code == code, failure
    assert_clean(failure)
    assert await snapshot(gql) == before
    return failure.errors[0].message


@pytest.fixture
async def world(gql: Any) -> dict[str, Any]:
    """A project with a task claimed by an agent, and a second project with one task."""
    pid = await f.project(gql, name="Main")
    other = await f.project(gql, name="Other")
    await f.agent(gql, name="w1")
    claimed = await f.task(gql, project_id=pid, title="Claimed")
    await f.claim(gql, task_id=claimed["id"], agent="w1")
    free = await f.task(gql, project_id=pid, title="Free")
    foreign = await f.task(gql, project_id=other, title="Foreign")
    return {"pid": pid, "other": other, "claimed": claimed["id"], "free": free["id"], "foreign": foreign["id"]}


def task_input(world: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """A CreateTaskInput in the main project, with `fields` set."""
    return {"projectId": world["pid"], "title": "t", "taskType": "research", **fields}


UPDATE_PRIORITY = "mutation($id: ID!, $p: Int) { updateTask(id: $id, input: {priority: $p}) { id } }"
PROGRESS = 'mutation($id: ID!, $p: Int!) { reportProgress(id: $id, agent: "w1", progress: $p) { id } }'
REGISTER = "mutation($name: String!) { registerAgent(input: {name: $name}) { token } }"
CREATE_PROJECT = "mutation($name: String!) { createProject(input: {name: $name}) { id } }"
RENAME_PROJECT = "mutation($id: ID!, $name: String) { updateProject(id: $id, input: {name: $name}) { id } }"
ADD_DEPENDENCY = "mutation($t: ID!, $d: ID!) { addDependency(taskId: $t, dependsOn: $d) { id } }"
CASE = ("code", "query", "variables", "says")


def case(name: str, code: str, query: str, variables: Any = None, *, says: tuple[str, ...] = ()) -> Any:
    """One bad request: the code it must get, the words its message must contain, and its
    variables as a function of the `world` fixture."""
    return pytest.param(code, query, variables or (lambda world: {}), says, id=name.replace(" ", "_"))


OUT_OF_RANGE_NUMBERS = [
    *(
        case(
            f"create task priority {p}",
            "BAD_USER_INPUT",
            CREATE_TASK,
            lambda w, p=p: {"input": task_input(w, priority=p)},
            says=("priority",),
        )
        for p in (0, 11)
    ),
    *(
        case(
            f"update task priority {p}",
            "BAD_USER_INPUT",
            UPDATE_PRIORITY,
            lambda w, p=p: {"id": w["free"], "p": p},
        )
        for p in (0, 11)
    ),
    *(
        case(
            f"progress {p}",
            "BAD_USER_INPUT",
            PROGRESS,
            lambda w, p=p: {"id": w["claimed"], "p": p},
            says=("progress",),
        )
        for p in (-1, 101)
    ),
]


STRING_LENGTHS = [
    case(
        "title of 501 characters",
        "BAD_USER_INPUT",
        CREATE_TASK,
        lambda w: {"input": task_input(w, title="x" * 501)},
        says=("title", "500"),
    ),
    *(
        case(
            f"{kind} title",
            "BAD_USER_INPUT",
            CREATE_TASK,
            lambda w, t=title: {"input": task_input(w, title=t)},
        )
        for kind, title in (("empty", ""), ("blank", "   "))
    ),
    case(
        "empty title in update",
        "BAD_USER_INPUT",
        'mutation($id: ID!) { updateTask(id: $id, input: {title: ""}) { id } }',
        lambda w: {"id": w["free"]},
    ),
    case(
        "description of 10001 characters",
        "BAD_USER_INPUT",
        CREATE_TASK,
        lambda w: {"input": task_input(w, description="d" * 10_001)},
        says=("description",),
    ),
    case("agent name of 101 characters", "BAD_USER_INPUT", REGISTER, lambda w: {"name": "a" * 101}),
    case("project name of 101 characters", "BAD_USER_INPUT", CREATE_PROJECT, lambda w: {"name": "p" * 101}),
    case(
        "project rename to 101 characters",
        "BAD_USER_INPUT",
        RENAME_PROJECT,
        lambda w: {"id": w["pid"], "name": "p" * 101},
    ),
]


UNKNOWN_IDS = [
    case(
        "create task in unknown project",
        "NOT_FOUND",
        CREATE_TASK,
        lambda w: {"input": {**task_input(w), "projectId": "9999"}},
    ),
    case(
        "create tasks in unknown project",
        "NOT_FOUND",
        CREATE_TASKS,
        lambda w: {"pid": "9999", "tasks": [{"title": "t", "taskType": "research"}]},
    ),
    case(
        "depends on unknown task",
        "NOT_FOUND",
        CREATE_TASK,
        lambda w: {"input": task_input(w, dependsOn=["9999"])},
    ),
    case("claim unknown task", "NOT_FOUND", 'mutation { claimTask(id: "9999", agent: "w1") { id } }'),
    case(
        "claim by unknown agent",
        "NOT_FOUND",
        'mutation($id: ID!) { claimTask(id: $id, agent: "ghost") { id } }',
        lambda w: {"id": w["free"]},
    ),
    case(
        "assign to unknown agent",
        "NOT_FOUND",
        CREATE_TASK,
        lambda w: {"input": task_input(w, assignee="ghost")},
    ),
    case("heartbeat of unknown agent", "NOT_FOUND", 'mutation { heartbeat(agent: "ghost") { name } }'),
    case(
        "add dependency on unknown task",
        "NOT_FOUND",
        'mutation($id: ID!) { addDependency(taskId: $id, dependsOn: "9999") { id } }',
        lambda w: {"id": w["free"]},
    ),
]


MALFORMED_REQUESTS = [
    case("malformed document", "BAD_USER_INPUT", "mutation { createProject(input: {name: "),
    case(
        "malformed datetime variable",
        "BAD_USER_INPUT",
        CREATE_TASK,
        lambda w: {"input": task_input(w, availableAt="yesterday")},
    ),
    case(
        "malformed datetime literal",
        "BAD_USER_INPUT",
        'mutation($id: ID!) { updateTask(id: $id, input: {availableAt: "yesterday"}) { id } }',
        lambda w: {"id": w["free"]},
    ),
    case("wrong enum literal", "BAD_USER_INPUT", "{ tasks(filter: {status: [DONE]}) { totalCount } }"),
    case(
        "wrong enum variable",
        "BAD_USER_INPUT",
        "mutation($id: ID!, $s: ProjectStatus) { updateProject(id: $id, input: {status: $s}) { id } }",
        lambda w: {"id": w["pid"], "s": "DONE"},
    ),
    case("unknown field", "BAD_USER_INPUT", "{ tasks { nodes { secretColumn } } }"),
    *(
        case(
            f"malformed id {task_id}",
            "BAD_USER_INPUT",
            "mutation($id: ID!) { deleteTask(id: $id) }",
            lambda w, t=task_id: {"id": t},
        )
        for task_id in ("abc", "-1", "0", "99999999999999999999999")
    ),
]


INVALID_REFERENCES = [
    case(
        "dependency on a task in another project",
        "BAD_USER_INPUT",
        CREATE_TASK,
        lambda w: {"input": task_input(w, dependsOn=[w["foreign"]])},
        says=("project",),
    ),
    case(
        "add dependency on a task in another project",
        "BAD_USER_INPUT",
        ADD_DEPENDENCY,
        lambda w: {"t": w["free"], "d": w["foreign"]},
    ),
    case(
        "parent in another project",
        "BAD_USER_INPUT",
        CREATE_TASK,
        lambda w: {"input": task_input(w, parentId=w["foreign"])},
    ),
    case(
        "create tasks with a dangling ref",
        "BAD_USER_INPUT",
        CREATE_TASKS,
        lambda w: {
            "pid": w["pid"],
            "tasks": [
                {"title": "a", "taskType": "research", "ref": "a"},
                {"title": "b", "taskType": "research", "dependsOnRefs": ["missing"]},
            ],
        },
        says=("missing",),
    ),
    case(
        "create tasks with a duplicate ref",
        "BAD_USER_INPUT",
        CREATE_TASKS,
        lambda w: {
            "pid": w["pid"],
            "tasks": [
                {"title": "a", "taskType": "research", "ref": "a"},
                {"title": "b", "taskType": "research", "ref": "a"},
            ],
        },
    ),
    case(
        "create tasks with one bad item creates none",
        "BAD_USER_INPUT",
        CREATE_TASKS,
        lambda w: {
            "pid": w["pid"],
            "tasks": [
                {"title": "ok", "taskType": "research"},
                {"title": "bad", "taskType": "research", "priority": 99},
            ],
        },
    ),
]


class TestBadRequests:
    @pytest.mark.parametrize(
        CASE, OUT_OF_RANGE_NUMBERS + STRING_LENGTHS + UNKNOWN_IDS + MALFORMED_REQUESTS + INVALID_REFERENCES
    )
    async def test_gets_its_code_a_clean_message_and_changes_nothing(self, gql, world, code, query, variables, says):
        message = await fails_cleanly(gql, code, query, **variables(world))
        for word in says:
            assert word in message, message


class TestLimits:
    async def test_title_of_500_characters_is_fine(self, gql, world):
        data = await gql.execute(CREATE_TASK, input=task_input(world, title="x" * 500))
        assert data["createTask"]["id"]


class TestTextTheDatabaseCannotStore:
    """PostgreSQL stores no NUL character in text and no \\u0000 in JSONB. Where no
    validator looks (names that are only looked up, JSON values), the database refuses it:
    BAD_USER_INPUT with a clean message, never INTERNAL. SQLite stores both."""

    async def test_nul_in_a_looked_up_name(self, gql, world, backend):
        query = "mutation($n: String!) { unregisterAgent(name: $n) }"
        await fails_cleanly(gql, "BAD_USER_INPUT" if backend == "postgresql" else "NOT_FOUND", query, n="w\x001")

    async def test_nul_in_a_json_result(self, gql, world, backend):
        query = 'mutation($id: ID!, $r: JSON) { submitTask(id: $id, agent: "w1", result: $r) { status } }'
        if backend == "sqlite":
            assert (await gql.execute(query, id=world["claimed"], r={"k": "\x00"}))["submitTask"]["status"]
            return
        message = await fails_cleanly(gql, "BAD_USER_INPUT", query, id=world["claimed"], r={"k": "\x00"})
        assert "NUL" in message


class TestUnexpectedErrors:
    async def test_an_unexpected_exception_is_masked_as_internal(self, gql, world, monkeypatch):
        async def broken(session: Any, project_id: int | None) -> Any:
            raise RuntimeError("secret detail from /srv/app/db.py: SELECT * FROM agents")

        monkeypatch.setattr(db_stats, "counts", broken)
        failure = await gql.error("{ dashboardStats { agents { total } } }")
        assert failure.code == "INTERNAL"
        error = failure.errors[0]
        assert error.extensions == {"code": "INTERNAL"}
        formatted = str(error.formatted)
        assert "secret" not in formatted
        assert "RuntimeError" not in formatted
        assert_clean(failure)


def nested(depth: int) -> str:
    """A valid query `depth` levels below the root field (graphql depth: the root is 0):
    tasks { nodes { project { tasks { nodes { ... } } } } }, one task per page so that only
    the depth, not the cost (MAX_QUERY_COST), is at stake."""
    levels = ["tasks(first: 1)", "nodes", "project"]
    opened = [levels[i % 3] for i in range(depth)]
    leaf = "totalCount" if opened[-1].startswith("tasks") else "id"
    return "{ " + " { ".join(opened) + f" {{ {leaf}" + " }" * len(opened) + " }"


class TestQueryLimits:
    async def test_a_query_deeper_than_the_limit(self, gql, world):
        failure = await gql.error(nested(MAX_DEPTH + 1))
        assert failure.code == "QUERY_TOO_COMPLEX"
        assert_clean(failure)

    async def test_a_query_at_the_depth_limit_runs(self, gql, world):
        data = await gql.execute(nested(MAX_DEPTH))
        assert data["tasks"]["nodes"]

    async def test_too_many_aliases(self, gql, world):
        query = "{ " + " ".join(f"a{i}: dashboardStats {{ generatedAt }}" for i in range(MAX_ALIASES + 1)) + " }"
        failure = await gql.error(query)
        assert failure.code == "QUERY_TOO_COMPLEX"
        assert_clean(failure)

    async def test_too_many_tokens(self, gql, world):
        query = "{ " + " ".join("__typename" for _ in range(MAX_TOKENS + 1)) + " }"
        failure = await gql.error(query)
        assert failure.code == "QUERY_TOO_COMPLEX"

    async def test_limits_hold_for_documents_seen_before(self, gql, world):
        """Parses and validations are cached per document text: a repeat is refused again."""
        too_deep = nested(MAX_DEPTH + 1)
        aliases = "{ " + " ".join(f"a{i}: dashboardStats {{ generatedAt }}" for i in range(MAX_ALIASES + 1)) + " }"
        for _ in range(3):
            assert (await gql.error(too_deep)).code == "QUERY_TOO_COMPLEX"
            assert (await gql.error(aliases)).code == "QUERY_TOO_COMPLEX"
            assert (await gql.error("{ tasks { nodes { nope } } }")).code == "BAD_USER_INPUT"
            assert (await gql.error("{ tasks { ")).code == "BAD_USER_INPUT"

    async def test_a_repeated_document_is_validated_once(self, gql, world):
        from strawberry.extensions.validation_cache import _get_validate_cache

        from task_service.api.schema import DOCUMENT_CACHE_SIZE

        cache = _get_validate_cache(DOCUMENT_CACHE_SIZE)
        query = "{ tasks(first: 3) { totalCount nodes { id title } } }"
        await gql.execute(query)
        before = cache.cache_info()
        for _ in range(5):
            await gql.execute(query)
        after = cache.cache_info()
        assert after.hits - before.hits == 5
        assert after.misses == before.misses

    async def test_too_complex_queries_change_nothing(self, gql, world):
        mutation = (
            "mutation { "
            + " ".join(f'p{i}: createProject(input: {{name: "p{i}"}}) {{ id }}' for i in range(MAX_ALIASES + 1))
            + " }"
        )
        await fails_cleanly(gql, "QUERY_TOO_COMPLEX", mutation)
