"""Nothing secret in the logs: a full session at DEBUG, with structured JSON logs, through
HTTP and WebSocket, with right and wrong credentials; then every line the server wrote is
scanned for the admin key and every agent token."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.conftest import running_server
from tests.e2e.security_helpers import (
    ADMIN_KEY,
    LEGACY_WS,
    admin_headers,
    bearer,
    close_clients,
    http_operation,
    ws_operation,
)

pytestmark = pytest.mark.timeout(300)

REGISTER = 'mutation($n: String!) { registerAgent(input: {name: $n, skills: ["x"]}) { token } }'


async def test_no_credential_reaches_the_log(e2e_pg_url: str, tmp_path: Path) -> None:
    wrong_key = ADMIN_KEY[:-4] + "abcd"
    async with running_server(e2e_pg_url, tmp_path, API_KEY=ADMIN_KEY, LOG_LEVEL="DEBUG", LOG_FORMAT="json") as server:
        tokens = []
        for name in ("writer", "editor"):
            outcome = await http_operation(server, admin_headers(), REGISTER, {"n": name})
            tokens.append(outcome.data["registerAgent"]["token"])
        rotated = (await http_operation(server, bearer(tokens[0]), REGISTER, {"n": "writer"})).data
        tokens.append(rotated["registerAgent"]["token"])
        project = await http_operation(
            server, bearer(tokens[1]), 'mutation { createProject(input: {name: "p"}) { id } }'
        )
        pid = project.data["createProject"]["id"]
        await http_operation(
            server,
            bearer(tokens[2]),
            "mutation($p: ID!) { createTask(input: "
            '{projectId: $p, title: "t", taskType: "x", requiresReview: false}) { id } }',
            {"p": pid},
        )
        claimed = await http_operation(server, bearer(tokens[2]), "mutation { claimNextTask { id } }")
        task_id = claimed.data["claimNextTask"]["id"]
        await http_operation(
            server, bearer(tokens[2]), "mutation($id: ID!) { submitTask(id: $id, result: 1) { id } }", {"id": task_id}
        )
        await ws_operation(server, bearer(tokens[1]), 'subscription { taskEvents(after: "0") { id } }')
        await ws_operation(
            server, {"headers": admin_headers()}, "subscription { dashboardStats { generatedAt } }", protocol=LEGACY_WS
        )
        await ws_operation(server, {"X-API-Key": wrong_key}, "{ agents { name } }")
        await http_operation(server, {"X-API-Key": wrong_key}, "{ agents { name } }")
        await http_operation(server, bearer(tokens[0]), "{ agents { name } }")  # rotated away
        await http_operation(server, admin_headers(), 'mutation { unregisterAgent(name: "editor") }')
        await http_operation(server, bearer(tokens[1]), "{ agents { name } }")  # revoked
        await close_clients()
        log = server.output(tail=10_000_000)

    assert log.strip(), "the server wrote nothing: the scan would prove nothing"
    for secret in (ADMIN_KEY, wrong_key, *tokens):
        assert secret not in log, f"a credential ({secret[:6]}...) appears in the server log"
        assert secret[4:24] not in log, "a fragment of a credential appears in the server log"
