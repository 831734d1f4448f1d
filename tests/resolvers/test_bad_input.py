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


class TestOutOfRangeNumbers:
    @pytest.mark.parametrize("priority", [0, 11])
    async def test_create_task_priority_outside_one_to_ten(self, gql, world, priority):
        message = await fails_cleanly(
            gql,
            "BAD_USER_INPUT",
            CREATE_TASK,
            input={"projectId": world["pid"], "title": "t", "taskType": "research", "priority": priority},
        )
        assert "priority" in message

    @pytest.mark.parametrize("priority", [0, 11])
    async def test_update_task_priority_outside_one_to_ten(self, gql, world, priority):
        await fails_cleanly(
            gql,
            "BAD_USER_INPUT",
            "mutation($id: ID!, $p: Int) { updateTask(id: $id, input: {priority: $p}) { id } }",
            id=world["free"],
            p=priority,
        )

    @pytest.mark.parametrize("progress", [-1, 101])
    async def test_progress_outside_zero_to_hundred(self, gql, world, progress):
        message = await fails_cleanly(
            gql,
            "BAD_USER_INPUT",
            'mutation($id: ID!, $p: Int!) { reportProgress(id: $id, agent: "w1", progress: $p) { id } }',
            id=world["claimed"],
            p=progress,
        )
        assert "progress" in message


class TestStringLengths:
    async def test_title_of_501_characters(self, gql, world):
        message = await fails_cleanly(
            gql,
            "BAD_USER_INPUT",
            CREATE_TASK,
            input={"projectId": world["pid"], "title": "x" * 501, "taskType": "research"},
        )
        assert "title" in message
        assert "500" in message

    async def test_title_of_500_characters_is_fine(self, gql, world):
        data = await gql.execute(
            CREATE_TASK, input={"projectId": world["pid"], "title": "x" * 500, "taskType": "research"}
        )
        assert data["createTask"]["id"]

    @pytest.mark.parametrize("title", ["", "   "])
    async def test_empty_title(self, gql, world, title):
        await fails_cleanly(
            gql,
            "BAD_USER_INPUT",
            CREATE_TASK,
            input={"projectId": world["pid"], "title": title, "taskType": "research"},
        )

    async def test_empty_title_in_update(self, gql, world):
        await fails_cleanly(
            gql,
            "BAD_USER_INPUT",
            'mutation($id: ID!) { updateTask(id: $id, input: {title: ""}) { id } }',
            id=world["free"],
        )

    async def test_description_of_10001_characters(self, gql, world):
        message = await fails_cleanly(
            gql,
            "BAD_USER_INPUT",
            CREATE_TASK,
            input={"projectId": world["pid"], "title": "t", "taskType": "research", "description": "d" * 10_001},
        )
        assert "description" in message

    async def test_agent_name_of_101_characters(self, gql, world):
        await fails_cleanly(
            gql,
            "BAD_USER_INPUT",
            "mutation($name: String!) { registerAgent(input: {name: $name}) { token } }",
            name="a" * 101,
        )

    async def test_project_name_of_101_characters(self, gql, world):
        await fails_cleanly(
            gql,
            "BAD_USER_INPUT",
            "mutation($name: String!) { createProject(input: {name: $name}) { id } }",
            name="p" * 101,
        )

    async def test_project_rename_to_101_characters(self, gql, world):
        await fails_cleanly(
            gql,
            "BAD_USER_INPUT",
            "mutation($id: ID!, $name: String) { updateProject(id: $id, input: {name: $name}) { id } }",
            id=world["pid"],
            name="p" * 101,
        )


class TestUnknownIds:
    async def test_create_task_in_unknown_project(self, gql, world):
        await fails_cleanly(
            gql, "NOT_FOUND", CREATE_TASK, input={"projectId": "9999", "title": "t", "taskType": "research"}
        )

    async def test_create_tasks_in_unknown_project(self, gql, world):
        await fails_cleanly(gql, "NOT_FOUND", CREATE_TASKS, pid="9999", tasks=[{"title": "t", "taskType": "research"}])

    async def test_depends_on_unknown_task(self, gql, world):
        await fails_cleanly(
            gql,
            "NOT_FOUND",
            CREATE_TASK,
            input={"projectId": world["pid"], "title": "t", "taskType": "research", "dependsOn": ["9999"]},
        )

    async def test_claim_unknown_task(self, gql, world):
        await fails_cleanly(gql, "NOT_FOUND", 'mutation { claimTask(id: "9999", agent: "w1") { id } }')

    async def test_claim_by_unknown_agent(self, gql, world):
        await fails_cleanly(
            gql, "NOT_FOUND", 'mutation($id: ID!) { claimTask(id: $id, agent: "ghost") { id } }', id=world["free"]
        )

    async def test_assign_to_unknown_agent(self, gql, world):
        await fails_cleanly(
            gql,
            "NOT_FOUND",
            CREATE_TASK,
            input={"projectId": world["pid"], "title": "t", "taskType": "research", "assignee": "ghost"},
        )

    async def test_heartbeat_of_unknown_agent(self, gql, world):
        await fails_cleanly(gql, "NOT_FOUND", 'mutation { heartbeat(agent: "ghost") { name } }')

    async def test_add_dependency_on_unknown_task(self, gql, world):
        await fails_cleanly(
            gql,
            "NOT_FOUND",
            'mutation($id: ID!) { addDependency(taskId: $id, dependsOn: "9999") { id } }',
            id=world["free"],
        )


class TestMalformedRequests:
    async def test_malformed_document(self, gql, world):
        await fails_cleanly(gql, "BAD_USER_INPUT", "mutation { createProject(input: {name: ")

    async def test_malformed_datetime_variable(self, gql, world):
        await fails_cleanly(
            gql,
            "BAD_USER_INPUT",
            CREATE_TASK,
            input={"projectId": world["pid"], "title": "t", "taskType": "research", "availableAt": "yesterday"},
        )

    async def test_malformed_datetime_literal(self, gql, world):
        await fails_cleanly(
            gql,
            "BAD_USER_INPUT",
            'mutation($id: ID!) { updateTask(id: $id, input: {availableAt: "yesterday"}) { id } }',
            id=world["free"],
        )

    async def test_wrong_enum_literal(self, gql, world):
        await fails_cleanly(gql, "BAD_USER_INPUT", "{ tasks(filter: {status: [DONE]}) { totalCount } }")

    async def test_wrong_enum_variable(self, gql, world):
        await fails_cleanly(
            gql,
            "BAD_USER_INPUT",
            "mutation($id: ID!, $s: ProjectStatus) { updateProject(id: $id, input: {status: $s}) { id } }",
            id=world["pid"],
            s="DONE",
        )

    async def test_unknown_field(self, gql, world):
        await fails_cleanly(gql, "BAD_USER_INPUT", "{ tasks { nodes { secretColumn } } }")

    @pytest.mark.parametrize("task_id", ["abc", "-1", "0", "99999999999999999999999"])
    async def test_malformed_id(self, gql, world, task_id):
        await fails_cleanly(gql, "BAD_USER_INPUT", "mutation($id: ID!) { deleteTask(id: $id) }", id=task_id)


class TestInvalidReferences:
    async def test_dependency_on_a_task_in_another_project(self, gql, world):
        message = await fails_cleanly(
            gql,
            "BAD_USER_INPUT",
            CREATE_TASK,
            input={"projectId": world["pid"], "title": "t", "taskType": "research", "dependsOn": [world["foreign"]]},
        )
        assert "project" in message

    async def test_add_dependency_on_a_task_in_another_project(self, gql, world):
        await fails_cleanly(
            gql,
            "BAD_USER_INPUT",
            "mutation($t: ID!, $d: ID!) { addDependency(taskId: $t, dependsOn: $d) { id } }",
            t=world["free"],
            d=world["foreign"],
        )

    async def test_parent_in_another_project(self, gql, world):
        await fails_cleanly(
            gql,
            "BAD_USER_INPUT",
            CREATE_TASK,
            input={"projectId": world["pid"], "title": "t", "taskType": "research", "parentId": world["foreign"]},
        )

    async def test_create_tasks_with_a_dangling_ref(self, gql, world):
        message = await fails_cleanly(
            gql,
            "BAD_USER_INPUT",
            CREATE_TASKS,
            pid=world["pid"],
            tasks=[
                {"title": "a", "taskType": "research", "ref": "a"},
                {"title": "b", "taskType": "research", "dependsOnRefs": ["missing"]},
            ],
        )
        assert "missing" in message

    async def test_create_tasks_with_a_duplicate_ref(self, gql, world):
        await fails_cleanly(
            gql,
            "BAD_USER_INPUT",
            CREATE_TASKS,
            pid=world["pid"],
            tasks=[
                {"title": "a", "taskType": "research", "ref": "a"},
                {"title": "b", "taskType": "research", "ref": "a"},
            ],
        )

    async def test_create_tasks_with_one_bad_item_creates_none(self, gql, world):
        await fails_cleanly(
            gql,
            "BAD_USER_INPUT",
            CREATE_TASKS,
            pid=world["pid"],
            tasks=[{"title": "ok", "taskType": "research"}, {"title": "bad", "taskType": "research", "priority": 99}],
        )


class TestUnexpectedErrors:
    async def test_an_unexpected_exception_is_masked_as_internal(self, gql, world, monkeypatch):
        async def broken(session: Any) -> dict[str, int]:
            raise RuntimeError("secret detail from /srv/app/db.py: SELECT * FROM agents")

        monkeypatch.setattr(db_stats, "agent_counts", broken)
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

        from task_service.schema.root import DOCUMENT_CACHE_SIZE

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
