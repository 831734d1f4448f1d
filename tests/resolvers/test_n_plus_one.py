"""Nested fields of a page are batched: the number of SQL statements does not grow with the
number of tasks on the page."""

from __future__ import annotations

from typing import Any

from tests import factories as f
from tests.statements import StatementCounter, count_statements

PAGE = """
query($first: Int) {
  tasks(first: $first) {
    totalCount
    nodes {
      id
      project { id name progress { total } }
      assignee { name currentTasks { id } }
      dependencies { id }
      blockedBy { id }
      dependents { id }
      subtasks { id }
      parent { id }
      events(first: 5) { id task { id } }
    }
  }
}
"""
STATEMENT_BUDGET = 15


async def build_graph(gql: Any, *, count: int = 100) -> None:
    """`count` tasks in two projects: a parent with subtasks, chains of dependencies (some
    met), and tasks held by several agents."""
    projects = [await f.project(gql, name="A"), await f.project(gql, name="B")]
    for name in ("w1", "w2", "w3"):
        await f.agent(gql, name=name, maxConcurrentTasks=100)
    per_project = count // 2
    for pid in projects:
        parent = await f.task(gql, project_id=pid, title="Parent")
        items: list[dict[str, Any]] = []
        for i in range(per_project - 1):
            item: dict[str, Any] = {"title": f"T{i}", "taskType": "research", "ref": f"t{i}"}
            if i % 3 == 1:
                item["dependsOnRefs"] = [f"t{i - 1}"]
            if i % 5 == 0:
                item["dependsOn"] = [parent["id"]]
            if i % 4 == 0:
                item["parentId"] = parent["id"]
            if i % 7 == 2 and i % 3 != 1:
                item["assignee"] = ("w1", "w2", "w3")[i % 3]
            items.append(item)
        await gql.execute(
            "mutation($pid: ID!, $tasks: [CreateTaskInput!]!) { createTasks(projectId: $pid, tasks: $tasks) { id } }",
            pid=pid,
            tasks=items,
        )


async def statements_for_page(gql: Any, first: int) -> tuple[StatementCounter, dict[str, Any]]:
    with count_statements(gql.services) as counter:
        data = await gql.execute(PAGE, first=first)
    return counter, data


def assert_every_relation_used(nodes: list[dict[str, Any]]) -> None:
    """The page exercises every nested loader, so equal counts mean batching, not absence."""
    for field in ("subtasks", "dependencies", "dependents", "blockedBy"):
        assert any(n[field] for n in nodes), field
    assert any(n["parent"] for n in nodes)
    assert any(n["assignee"] and n["assignee"]["currentTasks"] for n in nodes)
    assert all(n["events"] and n["events"][0]["task"]["id"] == n["id"] for n in nodes)


class TestNestedFieldsAreBatched:
    async def test_statement_count_does_not_grow_with_the_page(self, gql):
        await build_graph(gql, count=100)
        small, small_data = await statements_for_page(gql, 10)
        large, data = await statements_for_page(gql, 100)
        assert_every_relation_used(small_data["tasks"]["nodes"])
        assert len(data["tasks"]["nodes"]) == data["tasks"]["totalCount"] == 100
        assert len(large) == len(small), f"first: 10 ran {len(small)} statements, first: 100 ran {len(large)}"
        assert large.queries <= STATEMENT_BUDGET, large.statements

    async def test_the_page_resolves_every_relation(self, gql):
        await build_graph(gql, count=100)
        _, data = await statements_for_page(gql, 100)
        nodes = data["tasks"]["nodes"]
        assert_every_relation_used(nodes)
        assert sum(1 for n in nodes if n["parent"]) == sum(len(n["subtasks"]) for n in nodes)
        assert sum(len(n["dependencies"]) for n in nodes) == sum(len(n["dependents"]) for n in nodes)
        assert {n["project"]["name"] for n in nodes} == {"A", "B"}
