"""claimNextTask's statement reads a bounded number of rows, however many tasks are ready,
blocked, scheduled or meant for other skills: checked on PostgreSQL's own EXPLAIN ANALYZE.

The claim runs inside the claim_next_task() function (migration 0005), whose statements an
EXPLAIN of the call does not show; auto_explain (a module shipped with PostgreSQL) sends the
plan of each nested statement to the client as a notice."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from tests import factories as f
from tests.statements import count_statements


async def create_many(gql: Any, project_id: str, count: int, **item: Any) -> None:
    for start in range(0, count, 500):
        batch = [{"title": f"t{start + i}", "taskType": "code", **item} for i in range(min(500, count - start))]
        await gql.execute(
            "mutation($p: ID!, $t: [CreateTaskInput!]!) { createTasks(projectId: $p, tasks: $t) { id } }",
            p=project_id,
            t=batch,
        )


def largest_row_count(plan: dict[str, Any]) -> tuple[int, str]:
    """The most rows any node of the plan produced (over all its loops), and that node."""
    rows = int(plan.get("Actual Rows", 0) * plan.get("Actual Loops", 1))
    removed = int(plan.get("Rows Removed by Filter", 0) * plan.get("Actual Loops", 1))
    best = (rows + removed, plan["Node Type"])
    for child in plan.get("Plans", []):
        best = max(best, largest_row_count(child))
    return best


async def claim_plan(database_url: str, statement: str, parameters: Any) -> dict[str, Any]:
    """The plan, as run (EXPLAIN ANALYZE), of the claim statement inside claim_next_task()
    when the driver's call (`statement`, `parameters`) runs again, generic (for any
    arguments, as a pooled connection's plan becomes); rolled back."""
    notices: list[str] = []
    conn = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://"))
    conn.add_log_listener(lambda _conn, message: notices.append(message.message))
    try:
        await conn.execute(
            "LOAD 'auto_explain'; SET auto_explain.log_min_duration = 0; SET auto_explain.log_analyze = on;"
            " SET auto_explain.log_nested_statements = on; SET auto_explain.log_format = json;"
            " SET auto_explain.log_level = notice;"
            # the plan a long-lived connection settles on after five calls, where the
            # parameters are not known (the first five are planned for their values)
            " SET plan_cache_mode = force_generic_plan"
        )
        transaction = conn.transaction()
        await transaction.start()
        try:  # the call runs the claim: take its locks, then roll back
            await conn.fetch(statement, *parameters)
        finally:
            await transaction.rollback()
    finally:
        await conn.close()
    plans = [json.loads(n.split("plan:", 1)[1]) for n in notices if "plan:" in n]
    (raw,) = [plan for plan in plans if plan["Query Text"].lstrip().startswith("WITH picked")]
    plan: dict[str, Any] = raw["Plan"]
    return plan


@pytest.mark.postgres_only
class TestClaimPlan:
    async def test_claim_reads_a_bounded_number_of_rows(self, gql, database_url):
        pid = await f.project(gql)
        await create_many(gql, pid, 1500)  # no skills required
        await create_many(gql, pid, 1500, requiredSkills=["python"])
        await create_many(gql, pid, 1500, requiredSkills=["rust"])  # not for this agent
        later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
        await create_many(gql, pid, 1500, priority=10, availableAt=later)  # scheduled, not yet due
        await create_many(gql, pid, 1500, priority=10, requiredSkills=["python"], availableAt=later)
        due = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
        await create_many(gql, pid, 2, priority=9, availableAt=due)  # scheduled and due: claimed first
        first = await f.task(gql, project_id=pid, title="blocker")
        for _ in range(3):
            await f.task(gql, project_id=pid, dependsOn=[first["id"]], priority=10)  # blocked
        await f.agent(gql, name="py", skills=["python"])
        with count_statements(gql.services) as counter:
            data = await gql.execute('mutation { claimNextTask(agent: "py") { id requiredSkills } }')
        # The claim: db/driver.py's call of claim_next_task(), with the arguments it was sent with.
        claims = [(query, args) for query, args in counter.driver_queries if "claim_next_task(" in query]
        assert data["claimNextTask"] is not None
        query = "query($id: ID!) { task(id: $id) { priority availableAt } }"
        claimed = await gql.execute(query, id=data["claimNextTask"]["id"])
        assert claimed["task"]["priority"] == 9
        assert claimed["task"]["availableAt"] is not None
        assert len(claims) == 1
        plan = await claim_plan(database_url, *claims[0])
        rows, node = largest_row_count(plan)
        # One scan over every ready task of the agent's skill sets would read 3,000 rows, and
        # skipping the scheduled ones in claim order another 3,000.
        assert rows <= 20, f"the claim's {node} read {rows} rows:\n{json.dumps(plan, indent=1)[:3000]}"

    async def test_a_claim_for_one_project_reads_none_of_another_projects_backlog(self, gql, database_url):
        # 3,000 ready tasks of another project, with the same skills, come first in claim order.
        backlog = await f.project(gql, name="Backlog")
        await create_many(gql, backlog, 3000)
        pid = await f.project(gql, name="Small")
        await create_many(gql, pid, 3)
        due = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
        later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
        await create_many(gql, backlog, 1500, availableAt=due)  # scheduled, due, also first
        await create_many(gql, pid, 1500, availableAt=later)  # this project's, not yet due
        await f.agent(gql, name="any")
        with count_statements(gql.services) as counter:
            data = await gql.execute(
                'mutation($p: ID!) { claimNextTask(agent: "any", projectId: $p) { id project { id } } }', p=pid
            )
        claims = [(query, args) for query, args in counter.driver_queries if "claim_next_task(" in query]
        assert data["claimNextTask"]["project"]["id"] == pid
        assert len(claims) == 1
        plan = await claim_plan(database_url, *claims[0])
        rows, node = largest_row_count(plan)
        # Read in claim order and filtered, the other project's ready tasks alone are 3,000 rows.
        assert rows <= 20, f"the claim's {node} read {rows} rows:\n{json.dumps(plan, indent=1)[:3000]}"


def cte_rows(plan: dict[str, Any], name: str) -> int | None:
    """The rows of tasks the plan's CTE `name` read (produced and filtered out, over all
    loops), or None when the plan has no such CTE."""
    if plan.get("Subplan Name") == f"CTE {name}":
        return _rows_read(plan)
    for child in plan.get("Plans", []):
        found = cte_rows(child, name)
        if found is not None:
            return found
    return None


def _rows_read(plan: dict[str, Any]) -> int:
    """Rows its scans of tasks read (the EXISTS over the claimed row is not one)."""
    own = 0
    if plan.get("Relation Name") == "tasks" and plan["Node Type"].endswith("Scan"):
        rows = plan.get("Actual Rows", 0) + plan.get("Rows Removed by Filter", 0)
        own = int(rows * plan.get("Actual Loops", 1))
    return own + sum(_rows_read(child) for child in plan.get("Plans", []))


@pytest.mark.postgres_only
class TestRenewalScan:
    """Migration 0008: a claim within a second of the agent's last lease renewal reads none of
    the tasks it holds; a claim a second later reads them to renew them."""

    async def test_the_renewal_reads_the_agents_tasks_only_a_second_after_the_last(self, gql, database_url):
        pid = await f.project(gql)
        await create_many(gql, pid, 32)
        await f.agent(gql, name="holder", maxConcurrentTasks=100)
        for _ in range(30):
            assert (await gql.execute('mutation { claimNextTask(agent: "holder") { id } }'))["claimNextTask"]
        with count_statements(gql.services) as counter:
            await gql.execute('mutation { claimNextTask(agent: "holder") { id } }')
        ((query, args),) = [(q, a) for q, a in counter.driver_queries if "claim_next_task(" in q]
        conn = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            renewed = await conn.fetchval("SELECT leases_renewed_at FROM agents WHERE name = 'holder'")
        finally:
            await conn.close()
        assert renewed is not None

        def at(seconds: float) -> tuple[Any, ...]:
            """The claim's arguments, as if sent `seconds` after the last renewal."""
            name, _now, _lease, *rest = args
            now = renewed + timedelta(seconds=seconds)
            return (name, now, now + timedelta(minutes=10), *rest)

        soon = cte_rows(await claim_plan(database_url, query, at(0.5)), "renewed")
        later = cte_rows(await claim_plan(database_url, query, at(1.5)), "renewed")
        assert soon == 0, f"within a second of the last renewal the claim read {soon} rows to renew"
        assert later is not None
        assert later >= 31, later  # the 31 tasks it holds
