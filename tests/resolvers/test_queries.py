"""Reads (task, tasks, projects, agents, events, dashboardStats) and the editing mutations
(projects, updateTask, delete/restore, createTasks, idempotent createTask), through the schema."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select

from task_service.db.models import TaskEvent
from tests import factories as f
from tests.statements import StatementCounter, count_statements

TASKS = """
query($filter: TaskFilter, $first: Int, $after: String) {
  tasks(filter: $filter, first: $first, after: $after) {
    totalCount pageInfo { hasNextPage endCursor } nodes { id title }
  }
}
"""

CREATE_TASKS = """
mutation($pid: ID!, $tasks: [CreateTaskInput!]!) { createTasks(projectId: $pid, tasks: $tasks) { id title } }
"""


async def tasks(gql: Any, first: int | None = 100, after: str | None = None, **filter: Any) -> dict[str, Any]:
    data = await gql.execute(TASKS, filter=filter or None, first=first, after=after)
    return data["tasks"]


async def task_ids(gql: Any, **filter: Any) -> list[str]:
    return [n["id"] for n in (await tasks(gql, **filter))["nodes"]]


async def create_many(gql: Any, pid: str, count: int, **common: Any) -> list[str]:
    items = [{"title": f"Task {i:04d}", "taskType": "research", **common} for i in range(count)]
    data = await gql.execute(CREATE_TASKS, pid=pid, tasks=items)
    return [t["id"] for t in data["createTasks"]]


async def all_task_ids(gql: Any) -> list[str]:
    return await task_ids(gql, includeDeleted=True)


class TestTaskById:
    async def test_returns_the_task(self, gql):
        pid = await f.project(gql)
        t = await f.task(gql, project_id=pid, title="Draft")
        data = await gql.execute("query($id: ID!) { task(id: $id) { id title status project { id } } }", id=t["id"])
        assert data["task"] == {"id": t["id"], "title": "Draft", "status": "PENDING", "project": {"id": pid}}

    async def test_unknown_id_is_null(self, gql):
        data = await gql.execute('{ task(id: "999999") { id } }')
        assert data["task"] is None

    async def test_malformed_id_is_bad_input(self, gql):
        failure = await gql.error('{ task(id: "abc") { id } }')
        assert failure.code == "BAD_USER_INPUT"

    async def test_deleted_task_is_null(self, gql):
        pid = await f.project(gql)
        t = await f.task(gql, project_id=pid)
        await gql.execute("mutation($id: ID!) { deleteTask(id: $id) }", id=t["id"])
        data = await gql.execute("query($id: ID!) { task(id: $id) { id } }", id=t["id"])
        assert data["task"] is None


class TestTaskFilters:
    async def test_project_id_selects_one_project(self, gql):
        a, b = await f.project(gql, name="A"), await f.project(gql, name="B")
        in_a = await create_many(gql, a, 2)
        await create_many(gql, b, 3)
        assert await task_ids(gql, projectId=a) == in_a

    async def test_status_list_matches_any(self, gql):
        pid = await f.project(gql)
        pending, assigned, cancelled = [await f.task(gql, project_id=pid, title=t) for t in "abc"]
        await f.agent(gql, name="w1")
        await f.claim(gql, task_id=assigned["id"], agent="w1")
        await f.transition(gql, "cancelTask", id=cancelled["id"])
        assert await task_ids(gql, status=["ASSIGNED", "CANCELLED"]) == [assigned["id"], cancelled["id"]]
        assert await task_ids(gql, status=["PENDING"]) == [pending["id"]]

    async def test_assignee_selects_the_agents_tasks(self, gql):
        pid = await f.project(gql)
        await f.agent(gql, name="w1")
        await f.agent(gql, name="w2")
        mine = await f.task(gql, project_id=pid, assignee="w1")
        await f.task(gql, project_id=pid, assignee="w2")
        await f.task(gql, project_id=pid)
        assert await task_ids(gql, assignee="w1") == [mine["id"]]

    async def test_unknown_assignee_matches_nothing(self, gql):
        pid = await f.project(gql)
        await f.task(gql, project_id=pid)
        page = await tasks(gql, assignee="nobody")
        assert page["nodes"] == []
        assert page["totalCount"] == 0

    async def test_task_type_matches_exactly(self, gql):
        pid = await f.project(gql)
        design = await f.task(gql, project_id=pid, task_type="design")
        await f.task(gql, project_id=pid, task_type="research")
        assert await task_ids(gql, taskType="design") == [design["id"]]

    async def test_tags_match_any_of_the_given(self, gql):
        pid = await f.project(gql)
        both = await f.task(gql, project_id=pid, tags=["ops", "urgent"])
        await f.task(gql, project_id=pid, tags=["ops"])
        docs = await f.task(gql, project_id=pid, tags=["docs"])
        await f.task(gql, project_id=pid)
        assert await task_ids(gql, tags=["urgent", "docs"]) == [both["id"], docs["id"]]

    async def test_tags_match_whole_tags_case_sensitively(self, gql):
        pid = await f.project(gql)
        await f.task(gql, project_id=pid, tags=["OPS", "devops", "a_b"])
        exact = await f.task(gql, project_id=pid, tags=["ops"])
        assert await task_ids(gql, tags=["ops"]) == [exact["id"]]
        assert await task_ids(gql, tags=["axb"]) == []

    async def test_tags_match_non_ascii_tags(self, gql):
        pid = await f.project(gql)
        t = await f.task(gql, project_id=pid, tags=["café", "日本"])
        await f.task(gql, project_id=pid, tags=["cafe"])
        assert await task_ids(gql, tags=["café"]) == [t["id"]]
        assert await task_ids(gql, tags=["日本"]) == [t["id"]]

    async def test_search_is_case_insensitive_in_title_and_description(self, gql):
        pid = await f.project(gql)
        in_title = await f.task(gql, project_id=pid, title="Quarterly REPORT")
        in_description = await f.task(gql, project_id=pid, title="Other", description="see the Report draft")
        await f.task(gql, project_id=pid, title="Unrelated", description="nothing here")
        assert await task_ids(gql, search="report") == [in_title["id"], in_description["id"]]

    async def test_search_takes_like_wildcards_literally(self, gql):
        pid = await f.project(gql)
        percent = await f.task(gql, project_id=pid, title="100% done")
        await f.task(gql, project_id=pid, title="1000 done")
        underscore = await f.task(gql, project_id=pid, title="snake_case")
        await f.task(gql, project_id=pid, title="snakeXcase")
        backslash = await f.task(gql, project_id=pid, title="C:\\temp")
        assert await task_ids(gql, search="%") == [percent["id"]]
        assert await task_ids(gql, search="0%") == [percent["id"]]
        assert await task_ids(gql, search="e_c") == [underscore["id"]]
        assert await task_ids(gql, search="\\t") == [backslash["id"]]

    async def test_ready_only_excludes_blocked_scheduled_and_claimed(self, gql):
        pid = await f.project(gql)
        ready = await f.task(gql, project_id=pid, title="ready")
        await f.task(gql, project_id=pid, title="blocked", dependsOn=[ready["id"]])
        await f.task(gql, project_id=pid, title="later", availableAt="2999-01-01T00:00:00+00:00")
        await f.agent(gql, name="w1")
        await f.task(gql, project_id=pid, title="assigned", assignee="w1")
        assert await task_ids(gql, readyOnly=True) == [ready["id"]]

    async def test_deleted_tasks_are_hidden_unless_included(self, gql):
        pid = await f.project(gql)
        kept = await f.task(gql, project_id=pid)
        gone = await f.task(gql, project_id=pid)
        await gql.execute("mutation($id: ID!) { deleteTask(id: $id) }", id=gone["id"])
        assert await task_ids(gql) == [kept["id"]]
        assert await task_ids(gql, includeDeleted=True) == [kept["id"], gone["id"]]

    async def test_filters_combine(self, gql):
        pid = await f.project(gql)
        match = await f.task(gql, project_id=pid, title="Ship it", task_type="deployment", tags=["ops"])
        await f.task(gql, project_id=pid, title="Ship it", task_type="research", tags=["ops"])
        await f.task(gql, project_id=pid, title="Other", task_type="deployment", tags=["ops"])
        ids = await task_ids(gql, projectId=pid, taskType="deployment", tags=["ops"], search="ship", status=["PENDING"])
        assert ids == [match["id"]]


class TestTaskPagination:
    async def test_pages_of_ten_cover_every_task_once(self, gql):
        pid = await f.project(gql)
        created = await create_many(gql, pid, 25)
        seen: list[str] = []
        pages: list[dict[str, Any]] = []
        after = None
        while True:
            page = await tasks(gql, first=10, after=after)
            pages.append(page)
            seen += [n["id"] for n in page["nodes"]]
            if not page["pageInfo"]["hasNextPage"]:
                break
            after = page["pageInfo"]["endCursor"]
        assert seen == created
        assert [len(p["nodes"]) for p in pages] == [10, 10, 5]
        assert [p["pageInfo"]["hasNextPage"] for p in pages] == [True, True, False]
        assert all(p["totalCount"] == 25 for p in pages)

    async def test_total_count_counts_every_match_not_the_page(self, gql):
        pid = await f.project(gql)
        await create_many(gql, pid, 12, tags=["x"])
        await create_many(gql, pid, 3)
        page = await tasks(gql, first=5, tags=["x"])
        assert len(page["nodes"]) == 5
        assert page["totalCount"] == 12

    async def test_end_cursor_is_null_on_an_empty_page(self, gql):
        page = await tasks(gql, first=10)
        assert page == {"totalCount": 0, "pageInfo": {"hasNextPage": False, "endCursor": None}, "nodes": []}

    async def test_exactly_a_full_last_page_has_no_next_page(self, gql):
        pid = await f.project(gql)
        await create_many(gql, pid, 10)
        page = await tasks(gql, first=10)
        assert len(page["nodes"]) == 10
        assert page["pageInfo"]["hasNextPage"] is False

    @pytest.mark.parametrize("cursor", ["garbage", "dGFzazphYmM=", "cHJvamVjdDox", ""])
    async def test_bad_cursor_is_bad_input(self, gql, cursor):
        failure = await gql.error(TASKS, first=10, after=cursor)
        assert failure.code == "BAD_USER_INPUT"

    @pytest.mark.parametrize("first", [-1, 501])
    async def test_page_size_out_of_range_is_bad_input(self, gql, first):
        failure = await gql.error(TASKS, first=first)
        assert failure.code == "BAD_USER_INPUT"
        assert "MAX_PAGE_SIZE" in failure.errors[0].message


class TestProjectQueries:
    async def test_project_by_id(self, gql):
        pid = await f.project(gql, name="Launch", description="the big one")
        data = await gql.execute("query($id: ID!) { project(id: $id) { id name description status } }", id=pid)
        assert data["project"] == {"id": pid, "name": "Launch", "description": "the big one", "status": "ACTIVE"}

    async def test_unknown_project_is_null(self, gql):
        data = await gql.execute('{ project(id: "424242") { id } }')
        assert data["project"] is None

    async def test_projects_filter_by_status(self, gql):
        active = await f.project(gql, name="A")
        paused = await f.project(gql, name="P", status="PAUSED")
        data = await gql.execute("{ all: projects { id } paused: projects(status: PAUSED) { id } }")
        assert [p["id"] for p in data["all"]] == [active, paused]
        assert [p["id"] for p in data["paused"]] == [paused]

    async def test_deleted_projects_are_listed_only_when_included(self, gql):
        kept = await f.project(gql, name="A")
        gone = await f.project(gql, name="B")
        await gql.execute("mutation($id: ID!) { deleteProject(id: $id) }", id=gone)
        data = await gql.execute("{ live: projects { id } all: projects(includeDeleted: true) { id deletedAt } }")
        assert [p["id"] for p in data["live"]] == [kept]
        assert [p["id"] for p in data["all"]] == [kept, gone]
        assert data["all"][1]["deletedAt"] is not None

    async def test_progress_counts_live_tasks_by_status(self, gql):
        pid = await f.project(gql)
        await f.agent(gql, name="w1", maxConcurrentTasks=10)
        await f.task(gql, project_id=pid)
        await f.task(gql, project_id=pid, assignee="w1")
        running = await f.task(gql, project_id=pid, assignee="w1")
        await f.transition(gql, "startTask", id=running["id"], agent="w1")
        done = await f.task(gql, project_id=pid, assignee="w1", requiresReview=False)
        await f.transition(gql, "submitTask", id=done["id"], agent="w1")
        cancelled = await f.task(gql, project_id=pid)
        await f.transition(gql, "cancelTask", id=cancelled["id"])
        deleted = await f.task(gql, project_id=pid)
        await gql.execute("mutation($id: ID!) { deleteTask(id: $id) }", id=deleted["id"])
        data = await gql.execute(
            "query($id: ID!) { project(id: $id) { progress { total pending assigned running reviewing "
            "completed failed cancelled percentComplete } } }",
            id=pid,
        )
        assert data["project"]["progress"] == {
            "total": 5,
            "pending": 1,
            "assigned": 1,
            "running": 1,
            "reviewing": 0,
            "completed": 1,
            "failed": 0,
            "cancelled": 1,
            "percentComplete": 20.0,
        }

    async def test_progress_of_an_empty_project_is_zero_percent(self, gql):
        pid = await f.project(gql)
        data = await gql.execute("query($id: ID!) { project(id: $id) { progress { total percentComplete } } }", id=pid)
        assert data["project"]["progress"] == {"total": 0, "percentComplete": 0.0}

    async def test_project_tasks_lists_only_its_tasks_and_pages(self, gql):
        pid = await f.project(gql, name="A")
        other = await f.project(gql, name="B")
        mine = await create_many(gql, pid, 3)
        await create_many(gql, other, 2)
        query = """query($id: ID!, $after: String) { project(id: $id) {
            tasks(first: 2, after: $after) { totalCount pageInfo { hasNextPage endCursor } nodes { id } } } }"""
        first = (await gql.execute(query, id=pid))["project"]["tasks"]
        second = (await gql.execute(query, id=pid, after=first["pageInfo"]["endCursor"]))["project"]["tasks"]
        assert [n["id"] for n in first["nodes"] + second["nodes"]] == mine
        assert (first["totalCount"], first["pageInfo"]["hasNextPage"], second["pageInfo"]["hasNextPage"]) == (
            3,
            True,
            False,
        )

    async def test_project_tasks_ignores_another_project_id_in_the_filter(self, gql):
        pid = await f.project(gql, name="A")
        other = await f.project(gql, name="B")
        mine = await create_many(gql, pid, 1)
        await create_many(gql, other, 1)
        data = await gql.execute(
            "query($id: ID!, $o: ID) { project(id: $id) { tasks(filter: {projectId: $o}) { nodes { id } } } }",
            id=pid,
            o=other,
        )
        assert [n["id"] for n in data["project"]["tasks"]["nodes"]] == mine


class TestAgentQueries:
    async def test_agent_by_name(self, gql):
        await f.agent(gql, name="writer", skills=["copywrite", "research"], role="author")
        data = await gql.execute('{ agent(name: "writer") { name role skills status maxConcurrentTasks } }')
        assert data["agent"] == {
            "name": "writer",
            "role": "author",
            "skills": ["copywrite", "research"],
            "status": "ONLINE",
            "maxConcurrentTasks": 3,
        }

    async def test_unknown_agent_is_null(self, gql):
        data = await gql.execute('{ agent(name: "ghost") { name } }')
        assert data["agent"] is None

    async def test_agents_filter_by_status_and_skill(self, gql):
        pid = await f.project(gql)
        await f.agent(gql, name="a1", skills=["video"])
        await f.agent(gql, name="a2", skills=["research"])
        await f.agent(gql, name="a3", skills=["video", "research"])
        await f.task(gql, project_id=pid, assignee="a3")
        data = await gql.execute(
            "{ busy: agents(status: BUSY) { name } online: agents(status: ONLINE) { name } "
            'video: agents(skill: "video") { name } none: agents(skill: "vid") { name } }'
        )
        assert data == {
            "busy": [{"name": "a3"}],
            "online": [{"name": "a1"}, {"name": "a2"}],
            "video": [{"name": "a1"}, {"name": "a3"}],
            "none": [],
        }

    async def test_unregistered_agents_are_listed_only_when_included(self, gql):
        await f.agent(gql, name="a1")
        await f.agent(gql, name="a2")
        await gql.execute('mutation { unregisterAgent(name: "a2") }')
        data = await gql.execute("{ live: agents { name } all: agents(includeDeleted: true) { name deletedAt } }")
        assert data["live"] == [{"name": "a1"}]
        assert [a["name"] for a in data["all"]] == ["a1", "a2"]
        assert data["all"][1]["deletedAt"] is not None

    async def test_current_tasks_are_the_held_live_tasks(self, gql):
        pid = await f.project(gql)
        await f.agent(gql, name="w1", maxConcurrentTasks=10)
        assigned = await f.task(gql, project_id=pid, assignee="w1")
        running = await f.task(gql, project_id=pid, assignee="w1")
        await f.transition(gql, "startTask", id=running["id"], agent="w1")
        reviewing = await f.task(gql, project_id=pid, assignee="w1")
        await f.transition(gql, "submitTask", id=reviewing["id"], agent="w1")
        done = await f.task(gql, project_id=pid, assignee="w1", requiresReview=False)
        await f.transition(gql, "submitTask", id=done["id"], agent="w1")
        await f.task(gql, project_id=pid)
        data = await gql.execute('{ agent(name: "w1") { currentTasks { id status } } }')
        assert data["agent"]["currentTasks"] == [
            {"id": assigned["id"], "status": "ASSIGNED"},
            {"id": running["id"], "status": "RUNNING"},
            {"id": reviewing["id"], "status": "REVIEWING"},
        ]


class TestEventsQuery:
    async def test_events_are_oldest_first_with_increasing_ids(self, gql):
        pid = await f.project(gql)
        t = await f.task(gql, project_id=pid)
        await f.agent(gql, name="w1")
        await f.claim(gql, task_id=t["id"], agent="w1")
        await f.transition(gql, "startTask", id=t["id"], agent="w1")
        evs = (await gql.execute("{ events { id type taskId projectId } }"))["events"]
        assert [e["type"] for e in evs] == ["CREATED", "CLAIMED", "STARTED"]
        ids = [int(e["id"]) for e in evs]
        assert ids == sorted(ids)
        assert len(set(ids)) == 3
        assert all(e["taskId"] == t["id"] and e["projectId"] == pid for e in evs)

    async def test_after_returns_only_later_events(self, gql):
        pid = await f.project(gql)
        await create_many(gql, pid, 4)
        evs = (await gql.execute("{ events { id } }"))["events"]
        later = (await gql.execute("query($a: ID) { events(after: $a) { id } }", a=evs[1]["id"]))["events"]
        assert later == evs[2:]
        everything = (await gql.execute('{ events(after: "0") { id } }'))["events"]
        assert everything == evs

    async def test_filters_by_project_and_task_and_limits(self, gql):
        a, b = await f.project(gql, name="A"), await f.project(gql, name="B")
        t1, t2 = await create_many(gql, a, 2)
        await create_many(gql, b, 2)
        await gql.execute('mutation($id: ID!) { updateTask(id: $id, input: {title: "New"}) { id } }', id=t1)
        data = await gql.execute(
            "query($p: ID, $t: ID) { byProject: events(projectId: $p) { taskId } byTask: events(taskId: $t) { type } "
            "limited: events(first: 2) { id } }",
            p=a,
            t=t1,
        )
        assert [e["taskId"] for e in data["byProject"]] == [t1, t2, t1]
        assert [e["type"] for e in data["byTask"]] == ["CREATED", "UPDATED"]
        assert len(data["limited"]) == 2


class TestDashboardStats:
    QUERY = """query($first: Int) { dashboardStats {
        projects { total active } agents { total online busy offline } deleted { projects tasks agents }
        tasks { total pending ready assigned running reviewing completed failed cancelled }
        recentEvents(first: $first) { id type } } }"""

    async def test_counts_tasks_agents_projects_and_deletions(self, gql):
        pid = await f.project(gql, name="A")
        await f.project(gql, name="Paused", status="PAUSED")
        gone = await f.project(gql, name="Gone")
        await create_many(gql, gone, 2)
        await gql.execute("mutation($id: ID!) { deleteProject(id: $id) }", id=gone)
        await f.agent(gql, name="busy")
        await f.agent(gql, name="idle")
        await f.agent(gql, name="left")
        await gql.execute('mutation { unregisterAgent(name: "left") }')
        ready = await f.task(gql, project_id=pid)
        await f.task(gql, project_id=pid, dependsOn=[ready["id"]])
        await f.task(gql, project_id=pid, availableAt="2999-01-01T00:00:00+00:00")
        await f.task(gql, project_id=pid, assignee="busy")
        deleted = await f.task(gql, project_id=pid)
        await gql.execute("mutation($id: ID!) { deleteTask(id: $id) }", id=deleted["id"])
        stats = (await gql.execute(self.QUERY))["dashboardStats"]
        assert stats["projects"] == {"total": 2, "active": 1}
        assert stats["agents"] == {"total": 2, "online": 1, "busy": 1, "offline": 0}
        assert stats["deleted"] == {"projects": 1, "tasks": 3, "agents": 1}
        assert stats["tasks"] == {
            "total": 4,
            "pending": 3,
            "ready": 1,
            "assigned": 1,
            "running": 0,
            "reviewing": 0,
            "completed": 0,
            "failed": 0,
            "cancelled": 0,
        }

    async def test_recent_events_are_newest_first_and_limited(self, gql):
        pid = await f.project(gql)
        await create_many(gql, pid, 5)
        oldest_first = (await gql.execute("{ events { id } }"))["events"]
        stats = (await gql.execute(self.QUERY, first=3))["dashboardStats"]
        assert [e["id"] for e in stats["recentEvents"]] == [e["id"] for e in reversed(oldest_first)][:3]

    async def test_recent_events_default_to_ten(self, gql):
        pid = await f.project(gql)
        await create_many(gql, pid, 12)
        stats = (await gql.execute("{ dashboardStats { recentEvents { id } } }"))["dashboardStats"]
        assert len(stats["recentEvents"]) == 10

    async def test_project_scope_counts_only_that_project(self, gql):
        a, b = await f.project(gql, name="A"), await f.project(gql, name="B")
        await create_many(gql, a, 2)
        await create_many(gql, b, 3)
        data = await gql.execute("query($p: ID) { dashboardStats(projectId: $p) { tasks { total } } }", p=b)
        assert data["dashboardStats"]["tasks"]["total"] == 3

    async def test_unknown_project_scope_is_not_found(self, gql):
        failure = await gql.error('{ dashboardStats(projectId: "9999") { tasks { total } } }')
        assert failure.code == "NOT_FOUND"


class TestProjectMutations:
    async def test_create_project(self, gql):
        data = await gql.execute(
            'mutation { createProject(input: {name: "Launch", description: "d", status: PAUSED}) '
            "{ id name description status deletedAt } }"
        )
        assert data["createProject"]["id"]
        assert {k: v for k, v in data["createProject"].items() if k != "id"} == {
            "name": "Launch",
            "description": "d",
            "status": "PAUSED",
            "deletedAt": None,
        }

    async def test_update_project_changes_only_given_fields(self, gql):
        pid = await f.project(gql, name="Old", description="keep me")
        data = await gql.execute(
            'mutation($id: ID!) { updateProject(id: $id, input: {name: "New", status: COMPLETED}) '
            "{ name description status } }",
            id=pid,
        )
        assert data["updateProject"] == {"name": "New", "description": "keep me", "status": "COMPLETED"}

    async def test_soft_delete_hides_the_project_and_its_tasks(self, gql):
        pid = await f.project(gql, name="A")
        other = await f.project(gql, name="B")
        await create_many(gql, pid, 2)
        kept = await create_many(gql, other, 1)
        assert await gql.execute("mutation($id: ID!) { deleteProject(id: $id) }", id=pid) == {"deleteProject": True}
        assert await task_ids(gql) == kept
        available = await gql.execute("{ availableTasks { id } }")
        assert [t["id"] for t in available["availableTasks"]] == kept
        assert [p["id"] for p in (await gql.execute("{ projects { id } }"))["projects"]] == [other]

    async def test_restore_brings_back_exactly_the_tasks_it_hid(self, gql):
        pid = await f.project(gql)
        t1, t2, t3 = await create_many(gql, pid, 3)
        await gql.execute("mutation($id: ID!) { deleteTask(id: $id) }", id=t2)
        await gql.execute("mutation($id: ID!) { deleteProject(id: $id) }", id=pid)
        data = await gql.execute("mutation($id: ID!) { restoreProject(id: $id) { id deletedAt } }", id=pid)
        assert data["restoreProject"] == {"id": pid, "deletedAt": None}
        assert await task_ids(gql) == [t1, t3]
        available = await gql.execute("{ availableTasks { id } }")
        assert [t["id"] for t in available["availableTasks"]] == [t1, t3]

    async def test_soft_delete_and_restore_set_the_holders_status(self, gql):
        """An agent whose only task leaves with its project is no longer BUSY; restoring the
        project makes it BUSY again (found by the state-machine fuzzer)."""
        pid = await f.project(gql)
        (task,) = await create_many(gql, pid, 1)
        await f.agent(gql, name="a")
        await f.claim(gql, task_id=task, agent="a")
        status = 'query { agent(name: "a") { status } }'
        assert (await gql.execute(status))["agent"]["status"] == "BUSY"
        await gql.execute("mutation($id: ID!) { deleteProject(id: $id) }", id=pid)
        assert (await gql.execute(status))["agent"]["status"] == "ONLINE"
        await gql.execute("mutation($id: ID!) { restoreProject(id: $id) { id } }", id=pid)
        assert (await gql.execute(status))["agent"]["status"] == "BUSY"

    async def test_hard_delete_erases_the_project_and_its_tasks(self, gql):
        pid = await f.project(gql, name="A")
        other = await f.project(gql, name="B")
        await create_many(gql, pid, 2)
        kept = await create_many(gql, other, 1)
        await gql.execute("mutation($id: ID!) { deleteProject(id: $id, hard: true) }", id=pid)
        assert await all_task_ids(gql) == kept
        data = await gql.execute(
            "query($id: ID!) { project(id: $id) { id } projects(includeDeleted: true) { id } }", id=pid
        )
        assert data == {"project": None, "projects": [{"id": other}]}

    async def test_hard_delete_frees_the_agents_that_held_its_tasks(self, gql):
        pid = await f.project(gql)
        await f.agent(gql, name="w1")
        await f.task(gql, project_id=pid, assignee="w1")
        await gql.execute("mutation($id: ID!) { deleteProject(id: $id, hard: true) }", id=pid)
        data = await gql.execute('{ agent(name: "w1") { status currentTasks { id } } }')
        assert data["agent"] == {"status": "ONLINE", "currentTasks": []}

    @pytest.mark.parametrize(
        "mutation",
        [
            'mutation { updateProject(id: "9999", input: {name: "x"}) { id } }',
            'mutation { deleteProject(id: "9999") }',
            'mutation { deleteProject(id: "9999", hard: true) }',
            'mutation { restoreProject(id: "9999") { id } }',
        ],
    )
    async def test_unknown_project_is_not_found(self, gql, mutation):
        failure = await gql.error(mutation)
        assert failure.code == "NOT_FOUND"
        assert (await gql.execute("{ projects(includeDeleted: true) { id } }"))["projects"] == []


class TestUpdateTask:
    async def test_fields_change_and_an_updated_event_names_them(self, gql):
        pid = await f.project(gql)
        t = await f.task(gql, project_id=pid, title="Old", priority=3)
        data = await gql.execute(
            'mutation($id: ID!) { updateTask(id: $id, input: {title: "New", priority: 9, tags: ["a"], '
            'description: "d"}) { title priority tags description } }',
            id=t["id"],
        )
        assert data["updateTask"] == {"title": "New", "priority": 9, "tags": ["a"], "description": "d"}
        evs = (await gql.execute("query($t: ID) { events(taskId: $t) { type data } }", t=t["id"]))["events"]
        assert [e["type"] for e in evs] == ["CREATED", "UPDATED"]
        assert evs[1]["data"]["changed"] == {"title": "New", "priority": 9, "tags": ["a"], "description": "d"}

    async def test_unchanged_values_write_no_event(self, gql):
        pid = await f.project(gql)
        t = await f.task(gql, project_id=pid, title="Same")
        await gql.execute('mutation($id: ID!) { updateTask(id: $id, input: {title: "Same"}) { id } }', id=t["id"])
        evs = (await gql.execute("query($t: ID) { events(taskId: $t) { type } }", t=t["id"]))["events"]
        assert [e["type"] for e in evs] == ["CREATED"]

    async def test_null_title_is_bad_input_and_changes_nothing(self, gql):
        pid = await f.project(gql)
        t = await f.task(gql, project_id=pid, title="Keep")
        failure = await gql.error("mutation($id: ID!) { updateTask(id: $id, input: {title: null}) { id } }", id=t["id"])
        assert failure.code == "BAD_USER_INPUT"
        data = await gql.execute("query($id: ID!) { task(id: $id) { title events { type } } }", id=t["id"])
        assert data["task"] == {"title": "Keep", "events": [{"type": "CREATED"}]}

    async def test_null_clears_an_optional_field(self, gql):
        pid = await f.project(gql)
        t = await f.task(gql, project_id=pid, description="temp")
        data = await gql.execute(
            "mutation($id: ID!) { updateTask(id: $id, input: {description: null}) { description } }", id=t["id"]
        )
        assert data["updateTask"]["description"] is None


class TestDeleteAndRestoreTask:
    async def test_soft_delete_hides_and_restore_brings_back(self, gql):
        pid = await f.project(gql)
        t = await f.task(gql, project_id=pid)
        assert await gql.execute("mutation($id: ID!) { deleteTask(id: $id) }", id=t["id"]) == {"deleteTask": True}
        assert await task_ids(gql) == []
        assert (await gql.execute("{ availableTasks { id } }"))["availableTasks"] == []
        data = await gql.execute("mutation($id: ID!) { restoreTask(id: $id) { id deletedAt ready } }", id=t["id"])
        assert data["restoreTask"] == {"id": t["id"], "deletedAt": None, "ready": True}
        assert await task_ids(gql) == [t["id"]]
        evs = (await gql.execute("query($t: ID) { events(taskId: $t) { type } }", t=t["id"]))["events"]
        assert [e["type"] for e in evs] == ["CREATED", "DELETED", "RESTORED"]

    async def test_hard_delete_erases_the_task(self, gql):
        pid = await f.project(gql)
        t = await f.task(gql, project_id=pid)
        await gql.execute("mutation($id: ID!) { deleteTask(id: $id, hard: true) }", id=t["id"])
        assert await all_task_ids(gql) == []

    @pytest.mark.parametrize(
        "mutation",
        [
            'mutation { deleteTask(id: "9999") }',
            'mutation { deleteTask(id: "9999", hard: true) }',
            'mutation { restoreTask(id: "9999") { id } }',
            'mutation { updateTask(id: "9999", input: {title: "x"}) { id } }',
        ],
    )
    async def test_unknown_task_is_not_found(self, gql, mutation):
        failure = await gql.error(mutation)
        assert failure.code == "NOT_FOUND"


class TestCreateTasks:
    async def test_a_thousand_items_in_one_call(self, gql):
        pid = await f.project(gql)
        created = await create_many(gql, pid, 1000)
        assert len(set(created)) == 1000
        assert (await tasks(gql, first=1))["totalCount"] == 1000

    async def test_a_thousand_and_one_items_is_bad_input_and_creates_nothing(self, gql):
        pid = await f.project(gql)
        items = [{"title": f"T{i}", "taskType": "research"} for i in range(1001)]
        failure = await gql.error(CREATE_TASKS, pid=pid, tasks=items)
        assert failure.code == "BAD_USER_INPUT"
        assert await all_task_ids(gql) == []

    async def test_refs_link_items_and_keep_input_order(self, gql):
        pid = await f.project(gql)
        items = [
            {"title": "b", "taskType": "research", "ref": "b", "dependsOnRefs": ["a"]},
            {"title": "a", "taskType": "research", "ref": "a"},
        ]
        data = await gql.execute(
            "mutation($pid: ID!, $tasks: [CreateTaskInput!]!) { createTasks(projectId: $pid, tasks: $tasks) "
            "{ title dependencies { title } ready } }",
            pid=pid,
            tasks=items,
        )
        assert data["createTasks"] == [
            {"title": "b", "dependencies": [{"title": "a"}], "ready": False},
            {"title": "a", "dependencies": [], "ready": True},
        ]


class TestCreateTaskIdempotency:
    async def test_repeat_with_the_same_key_returns_the_existing_task(self, gql):
        pid = await f.project(gql)
        first = await f.task(gql, project_id=pid, title="Once", idempotencyKey="k1")
        again = await f.task(gql, project_id=pid, title="Once", idempotencyKey="k1")
        assert again["id"] == first["id"]
        assert await all_task_ids(gql) == [first["id"]]
        assert [e["type"] for e in await f.events(gql)] == ["CREATED"]

    async def test_the_same_key_in_another_project_creates_a_task(self, gql):
        a, b = await f.project(gql, name="A"), await f.project(gql, name="B")
        first = await f.task(gql, project_id=a, idempotencyKey="k1")
        second = await f.task(gql, project_id=b, idempotencyKey="k1")
        assert first["id"] != second["id"]


def key_lookups(counter: StatementCounter) -> int:
    """SELECTs of tasks filtered by idempotency key."""
    return sum(1 for s in counter.selects_from("tasks") if "idempotency_key" in s.split(" WHERE ", 1)[-1])


class TestCreateTasksIdempotency:
    async def test_a_repeated_batch_returns_its_tasks_in_order_after_one_lookup(self, gql, services):
        pid = await f.project(gql)
        items = [{"title": f"T{i}", "taskType": "research", "idempotencyKey": f"key-{i}"} for i in range(1000)]
        with count_statements(services) as creating:
            first = (await gql.execute(CREATE_TASKS, pid=pid, tasks=items))["createTasks"]

        with count_statements(services) as repeating:
            again = (await gql.execute(CREATE_TASKS, pid=pid, tasks=items))["createTasks"]

        assert again == first
        assert [t["title"] for t in again] == [f"T{i}" for i in range(1000)]
        assert (key_lookups(creating), key_lookups(repeating)) == (1, 1)
        assert (await tasks(gql, first=1, includeDeleted=True))["totalCount"] == 1000
        async with services.read() as session:
            assert await session.scalar(select(func.count()).select_from(TaskEvent)) == 1000

    async def test_a_batch_whose_keys_partly_exist_is_refused_and_changes_nothing(self, gql):
        pid = await f.project(gql)
        (old,) = await create_many(gql, pid, 1, idempotencyKey="old")
        items = [
            {"title": "again", "taskType": "research", "idempotencyKey": "old"},
            {"title": "new", "taskType": "research", "idempotencyKey": "new"},
        ]

        failure = await gql.error(CREATE_TASKS, pid=pid, tasks=items)

        assert failure.code == "BAD_USER_INPUT"
        assert await all_task_ids(gql) == [old]
        assert len(await f.events(gql)) == 1
