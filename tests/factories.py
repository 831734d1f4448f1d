"""Keyword-only helpers that create things through the public API."""

from __future__ import annotations

from typing import Any

TASK_FIELDS = "id status attempt priority ready assignee { name } unmetBlocked: blockedBy { id }"


async def project(gql: Any, *, name: str = "Launch", **extra: Any) -> str:
    data = await gql.execute(
        "mutation($input: CreateProjectInput!) { createProject(input: $input) { id } }",
        input={"name": name, **extra},
    )
    return data["createProject"]["id"]


async def task(
    gql: Any, *, project_id: str, title: str = "Write the brief", task_type: str = "research", **extra: Any
) -> dict[str, Any]:
    data = await gql.execute(
        f"mutation($input: CreateTaskInput!) {{ createTask(input: $input) {{ {TASK_FIELDS} }} }}",
        input={"projectId": project_id, "title": title, "taskType": task_type, **extra},
    )
    return data["createTask"]


async def agent(gql: Any, *, name: str = "writer", skills: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    data = await gql.execute(
        "mutation($input: RegisterAgentInput!) { registerAgent(input: $input) "
        "{ token agent { id name status skills maxConcurrentTasks } } }",
        input={"name": name, "skills": skills or [], **extra},
    )
    return data["registerAgent"]


async def claim(gql: Any, *, task_id: str, agent: str) -> dict[str, Any]:
    data = await gql.execute(
        f"mutation($id: ID!, $agent: String) {{ claimTask(id: $id, agent: $agent) {{ {TASK_FIELDS} }} }}",
        id=task_id,
        agent=agent,
    )
    return data["claimTask"]


async def transition(gql: Any, mutation: str, **args: Any) -> dict[str, Any]:
    """Run a lifecycle mutation by name with keyword arguments (values as JSON variables)."""
    types = {
        "id": "ID!",
        "agent": "String",
        "attempt": "Int",
        "idempotencyKey": "String",
        "progress": "Int!",
        "message": "String",
        "result": "JSON",
        "summary": "String",
        "reason": "String",
        "error": "String!",
        "retryable": "Boolean",
        "reviewer": "String!",
        "approved": "Boolean!",
        "feedback": "String",
    }
    params = ", ".join(f"${k}: {types[k]}" for k in args)
    call = ", ".join(f"{k}: ${k}" for k in args)
    data = await gql.execute(
        f"mutation({params}) {{ {mutation}({call}) {{ {TASK_FIELDS} lastError feedback availableAt maxAttempts }} }}",
        **args,
    )
    return data[mutation]


async def events(gql: Any, *, task_id: str | None = None, after: str | None = None) -> list[dict[str, Any]]:
    data = await gql.execute(
        "query($t: ID, $a: ID) { events(taskId: $t, after: $a, first: 500) "
        "{ id taskId type fromStatus toStatus actor } }",
        t=task_id,
        a=after,
    )
    return data["events"]
