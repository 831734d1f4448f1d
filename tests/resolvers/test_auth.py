"""resolvers/auth.py: credentials to a Caller, tokens (stored hashed, rotated, revoked), and
an agent's authenticated call counting as its heartbeat. The permission rules themselves
are tested cell by cell over HTTP and WebSocket in tests/e2e/test_permissions.py."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from task_service.db.base import utcnow
from task_service.db.models import Agent
from task_service.resolvers.auth import Caller, Role, authenticate, header_credentials
from task_service.resolvers.context import Context
from task_service.services import Services
from tests import factories as f
from tests.conftest import Client, empty_database, make_settings

KEY = "admin-key-for-tests-0123456789"


@pytest.fixture
async def secured(database_url: str) -> AsyncIterator[Services]:
    svc = Services.build(make_settings(database_url, api_key=KEY))
    await svc.start()
    await empty_database(svc)
    yield svc
    await svc.close()


@pytest.fixture
def admin(schema, secured: Services) -> Client:  # type: ignore[no-untyped-def]
    return Client(schema, secured)


async def caller_for(services: Services, *, key: str | None = None, bearer: str | None = None) -> Caller:
    return await authenticate(services, key, f"Bearer {bearer}" if bearer is not None else None, client_ip="127.0.0.1")


class TestAuthenticate:
    async def test_open_without_an_api_key(self, services: Services) -> None:
        caller = await caller_for(services)
        assert caller.role is Role.OPEN
        assert caller.authenticated

    async def test_the_admin_key_in_either_header(self, secured: Services) -> None:
        assert (await caller_for(secured, key=KEY)).role is Role.ADMIN
        assert (await caller_for(secured, bearer=KEY)).role is Role.ADMIN

    @pytest.mark.parametrize(
        ("key", "authorization", "says"),
        [
            (None, None, "needs a credential"),
            ("wrong-key", None, "X-API-Key is not"),
            (None, "Basic abc", "must be 'Bearer"),
            (None, "Bearer tsa_unknown", "token is not valid"),
            (KEY[:-1], None, "X-API-Key is not"),
        ],
    )
    async def test_anything_else_is_anonymous_with_a_reason(
        self, secured: Services, key: str | None, authorization: str | None, says: str
    ) -> None:
        caller = await authenticate(secured, key, authorization, client_ip=None)
        assert caller.role is Role.ANONYMOUS
        assert not caller.authenticated
        assert says in (caller.problem or "")

    async def test_an_agent_token_names_its_agent(self, admin: Client, secured: Services) -> None:
        registered = await f.agent(admin, name="writer")
        caller = await caller_for(secured, bearer=registered["token"])
        assert (caller.role, caller.agent_name, caller.agent_id) == (
            Role.AGENT,
            "writer",
            int(registered["agent"]["id"]),
        )

    async def test_only_the_tokens_hash_is_stored(self, admin: Client, secured: Services) -> None:
        token = (await f.agent(admin, name="writer"))["token"]
        async with secured.read() as session:
            stored = await session.scalar(select(Agent.token_hash).where(Agent.name == "writer"))
        assert stored == hashlib.sha256(token.encode()).hexdigest()
        assert token not in str(stored)
        assert token.startswith("tsa_")
        assert len(token) >= 40  # 32 random bytes, url-safe

    async def test_reregistering_rotates_the_token(self, admin: Client, secured: Services) -> None:
        old = (await f.agent(admin, name="writer"))["token"]
        new = (await f.agent(admin, name="writer"))["token"]
        assert new != old
        assert (await caller_for(secured, bearer=old)).role is Role.ANONYMOUS
        assert (await caller_for(secured, bearer=new)).role is Role.AGENT

    async def test_unregistering_revokes_the_token(self, admin: Client, secured: Services) -> None:
        token = (await f.agent(admin, name="writer"))["token"]
        await admin.execute('mutation { unregisterAgent(name: "writer") }')
        assert (await caller_for(secured, bearer=token)).role is Role.ANONYMOUS


class TestHeaderCredentials:
    def test_names_match_case_insensitively(self) -> None:
        assert header_credentials({"x-api-key": "k", "AUTHORIZATION": "Bearer t"}) == ("k", "Bearer t")

    def test_a_payload_may_nest_them_under_headers(self) -> None:
        assert header_credentials({"headers": {"X-API-Key": "k"}}) == ("k", None)

    def test_non_string_values_are_ignored(self) -> None:
        assert header_credentials({"X-API-Key": 5, "Authorization": ["Bearer t"]}) == (None, None)


class TestCallsAreHeartbeats:
    async def test_a_silent_agents_call_brings_it_back_online(self, admin: Client, secured: Services) -> None:
        token = (await f.agent(admin, name="writer"))["token"]
        long_ago = utcnow() - timedelta(hours=1)
        async with secured.transaction() as session:
            await session.execute(
                update(Agent).where(Agent.name == "writer").values(status="OFFLINE", last_heartbeat_at=long_ago)
            )

        await caller_for(secured, bearer=token)

        data = await admin.execute('{ agent(name: "writer") { status lastHeartbeatAt } }')
        assert data["agent"]["status"] == "ONLINE"
        assert data["agent"]["lastHeartbeatAt"] > long_ago.isoformat()

    async def test_a_recent_heartbeat_is_not_written_again(self, admin: Client, secured: Services) -> None:
        token = (await f.agent(admin, name="writer"))["token"]
        before = (await admin.execute('{ agent(name: "writer") { lastHeartbeatAt } }'))["agent"]["lastHeartbeatAt"]

        for _ in range(3):
            await caller_for(secured, bearer=token)

        after = (await admin.execute('{ agent(name: "writer") { lastHeartbeatAt } }'))["agent"]["lastHeartbeatAt"]
        assert after == before


class TestActingAgent:
    async def test_a_token_acts_without_naming_its_agent(self, schema, admin: Client, secured: Services) -> None:  # type: ignore[no-untyped-def]
        token = (await f.agent(admin, name="writer"))["token"]
        caller = await caller_for(secured, bearer=token)
        result = await schema.execute("mutation { heartbeat { name } }", context_value=Context(secured, caller=caller))
        assert result.errors is None
        assert result.data == {"heartbeat": {"name": "writer"}}

    async def test_naming_another_agent_is_forbidden(self, schema, admin: Client, secured: Services) -> None:  # type: ignore[no-untyped-def]
        token = (await f.agent(admin, name="writer"))["token"]
        await f.agent(admin, name="editor")
        caller = await caller_for(secured, bearer=token)
        result = await schema.execute(
            'mutation { heartbeat(agent: "editor") { name } }', context_value=Context(secured, caller=caller)
        )
        assert result.errors is not None
        assert result.errors[0].extensions == {"code": "FORBIDDEN"}

    async def test_events_name_the_acting_agent(self, schema, admin: Client, secured: Services) -> None:  # type: ignore[no-untyped-def]
        token = (await f.agent(admin, name="writer"))["token"]
        pid = await f.project(admin)
        task = await f.task(admin, project_id=pid)
        caller = await caller_for(secured, bearer=token)
        result = await schema.execute(
            f'mutation {{ cancelTask(id: "{task["id"]}") {{ id }} }}', context_value=Context(secured, caller=caller)
        )
        assert result.errors is None
        events = await f.events(admin, task_id=task["id"])
        assert events[-1]["actor"] == "writer"
