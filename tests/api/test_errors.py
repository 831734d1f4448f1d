"""Errors the caller should simply retry say so: a database that cannot be reached gives a
clear message and `extensions.retryable`, never the masked "Internal server error."."""

from __future__ import annotations

import asyncpg
import pytest
from sqlalchemy.exc import DBAPIError, InternalError

from task_service.api.errors import DATABASE_UNAVAILABLE
from task_service.api.schema import Schema
from task_service.db.health import unreachable
from task_service.services import Services
from tests.conftest import Client, make_settings
from tests.e2e.conftest import free_port

HEARTBEAT = 'mutation { heartbeat(agent: "nobody") { name } }'


class TestDatabaseUnavailable:
    async def test_a_mutation_against_an_unreachable_database_fails_retryably(self, schema: Schema) -> None:
        # A real refused connection: nothing listens on this port.
        services = Services.build(make_settings(f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/none"))
        try:
            failure = await Client(schema, services).error(HEARTBEAT)
        finally:
            await services.close()
        (error,) = failure.errors
        assert error.extensions == {"code": "INTERNAL", "retryable": True}
        assert error.message == DATABASE_UNAVAILABLE

    def test_a_connection_broken_under_an_operation_counts_as_unreachable(self) -> None:
        # What asyncpg raised at the next use of a connection PostgreSQL shut down mid-query.
        broken = asyncpg.InternalClientError("cannot switch to state 12; another operation (2) is in progress")
        assert unreachable(InternalError("SELECT 1", {}, broken))

    def test_a_server_out_of_connections_counts_as_unreachable(self) -> None:
        # What a busy PostgreSQL answers a new connection at max_connections (SQLSTATE 53300).
        full = asyncpg.TooManyConnectionsError("sorry, too many clients already")
        assert unreachable(DBAPIError("connect", {}, full))

    @pytest.mark.parametrize("error", [ValueError("bad"), InternalError("SELECT 1", {}, Exception("other"))])
    def test_other_failures_are_not(self, error: Exception) -> None:
        assert not unreachable(error)
