"""Project queries and mutations."""

from __future__ import annotations

import strawberry
from sqlalchemy.ext.asyncio import AsyncSession

from ..db import projects as db_projects
from ..errors import BadInput
from ..schema import validate
from ..schema.enums import ProjectStatus
from ..schema.projects import CreateProjectInput, Project, UpdateProjectInput
from .auth import Caller
from .context import Context

Info = strawberry.Info[Context, None]


@strawberry.type
class ProjectQuery:
    @strawberry.field
    async def project(self, info: Info, id: strawberry.ID) -> Project | None:
        async with info.context.services.read() as session:
            row = await db_projects.get_project(session, validate.parse_id(id))
        return Project.from_row(row) if row is not None else None

    @strawberry.field
    async def projects(
        self, info: Info, status: ProjectStatus | None = None, include_deleted: bool | None = False
    ) -> list[Project]:
        async with info.context.services.read() as session:
            rows = await db_projects.list_projects(
                session, status=status.value if status else None, include_deleted=bool(include_deleted)
            )
        return [Project.from_row(row) for row in rows]


async def _may_change(session: AsyncSession, caller: Caller, project_id: int, *, hard: bool, action: str) -> None:
    """Projects are changed, deleted and restored by the admin or the agent that created them."""
    if hard:
        caller.require_admin(f"{action} a project for good (hard: true)")
    if caller.is_agent:
        caller.require_creator(await db_projects.project_creator(session, project_id), f"project {project_id}", action)


@strawberry.type
class ProjectMutation:
    @strawberry.mutation
    async def create_project(self, info: Info, input: CreateProjectInput) -> Project:
        name = validate.name(input.name, "name")
        description = validate.description(input.description)
        async with info.context.services.transaction() as session:
            row = await db_projects.create_project(
                session,
                name=name or "",
                description=description,
                status=(input.status or ProjectStatus.ACTIVE).value,
                created_by=info.context.caller.agent_name,
            )
        return Project.from_row(row)

    @strawberry.mutation
    async def update_project(self, info: Info, id: strawberry.ID, input: UpdateProjectInput) -> Project:
        changes: dict[str, object] = {}
        if input.name is not strawberry.UNSET:
            changes["name"] = validate.name(input.name, "name")
        if input.description is not strawberry.UNSET:
            changes["description"] = validate.description(input.description)
        if input.status is not strawberry.UNSET:
            if input.status is None:
                raise BadInput("status cannot be null; omit it to keep the current status")
            changes["status"] = input.status.value
        project_id = validate.parse_id(id)
        async with info.context.services.transaction() as session:
            await _may_change(session, info.context.caller, project_id, hard=False, action="change")
            row = await db_projects.update_project(session, project_id, **changes)
        return Project.from_row(row)

    @strawberry.mutation(description="Soft delete hides the project and its tasks; hard: true erases them.")
    async def delete_project(self, info: Info, id: strawberry.ID, hard: bool | None = False) -> bool:
        project_id = validate.parse_id(id)
        async with info.context.services.transaction() as session:
            await _may_change(session, info.context.caller, project_id, hard=bool(hard), action="delete")
            if hard:
                await db_projects.hard_delete_project(session, project_id)
            else:
                await db_projects.soft_delete_project(session, project_id, actor=info.context.caller.actor)
        return True

    @strawberry.mutation
    async def restore_project(self, info: Info, id: strawberry.ID) -> Project:
        project_id = validate.parse_id(id)
        async with info.context.services.transaction() as session:
            await _may_change(session, info.context.caller, project_id, hard=False, action="restore")
            row = await db_projects.restore_project(session, project_id, actor=info.context.caller.actor)
        return Project.from_row(row)
