"""Agent queries and mutations: registration, heartbeats, unregister and restore."""

from __future__ import annotations

import strawberry

from ..db import agents as db_agents
from ..db.lifecycle import release_all
from ..errors import NotFound
from ..schema import validate
from ..schema.agents import Agent, AgentRegistration, RegisterAgentInput
from ..schema.enums import AgentStatus
from .context import Context

Info = strawberry.Info[Context, None]


@strawberry.type
class AgentQuery:
    @strawberry.field
    async def agent(self, info: Info, name: str) -> Agent | None:
        async with info.context.services.read() as session:
            row = await db_agents.get_agent(session, name)
        return Agent.from_row(row) if row is not None else None

    @strawberry.field
    async def agents(
        self,
        info: Info,
        status: AgentStatus | None = None,
        skill: str | None = None,
        include_deleted: bool | None = False,
    ) -> list[Agent]:
        async with info.context.services.read() as session:
            rows = await db_agents.list_agents(
                session, status=status.value if status else None, skill=skill, include_deleted=bool(include_deleted)
            )
        return [Agent.from_row(row) for row in rows]


@strawberry.type
class AgentMutation:
    @strawberry.mutation(description="Upsert by name; re-registering rotates the token.")
    async def register_agent(self, info: Info, input: RegisterAgentInput) -> AgentRegistration:
        name = validate.name(input.name, "name") or ""
        info.context.caller.require_self(name, "register (or rotate the token of)")
        role = validate.name(input.role, "role", required=False)
        skills = validate.labels(input.skills, "skills")
        limit = validate.int_range(input.max_concurrent_tasks, "maxConcurrentTasks", 1, 1000)
        async with info.context.services.transaction() as session:
            row, token = await db_agents.register_agent(
                session,
                name=name,
                role=role,
                skills=skills,
                capabilities=input.capabilities,
                max_concurrent_tasks=limit,
                default_max_concurrent=info.context.settings.max_concurrent_tasks_per_agent,
            )
        return AgentRegistration(agent=Agent.from_row(row), token=token)

    @strawberry.mutation(description="Renews the leases of the agent's tasks.")
    async def heartbeat(self, info: Info, agent: str | None = None) -> Agent:
        name = info.context.caller.acting_agent(agent)
        return Agent.from_row(await info.context.services.heartbeat(name))

    @strawberry.mutation(description="Its active tasks return to PENDING; hard: true erases the agent.")
    async def unregister_agent(self, info: Info, name: str, hard: bool | None = False) -> bool:
        caller = info.context.caller
        caller.require_self(name, "unregister")
        if hard:
            caller.require_admin("hard-delete an agent")
        actor = caller.actor
        async with info.context.services.transaction() as session:
            row = await db_agents.get_agent(session, name)
            if row is None:
                raise NotFound(f"agent '{name}' is not registered")
            row = await db_agents.lock_agent_by_id(session, row.id)
            assert row is not None
            await release_all(session, row, reason=f"agent '{name}' was unregistered", actor=actor)
            if hard:
                await db_agents.hard_delete_agent(session, row.id)
            else:
                await db_agents.soft_delete_agent(session, row)
        return True

    @strawberry.mutation
    async def restore_agent(self, info: Info, name: str) -> Agent:
        info.context.caller.require_self(name, "restore")
        async with info.context.services.transaction() as session:
            row = await db_agents.get_agent(session, name)
            if row is None:
                raise NotFound(f"agent '{name}' does not exist")
            row = await db_agents.lock_agent_by_id(session, row.id)
            assert row is not None
            await db_agents.restore_agent(session, row)
        return Agent.from_row(row)
