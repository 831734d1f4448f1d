"""A subscriber that goes away mid-stream is routine, not a server error.

Dashboards close tabs and agents are killed while events are being sent to them; the server
must end their operations quietly (no ERROR line, no traceback in its log) and go on
serving everyone else, on both protocols. Seen in the B9 soak (bench/run_all.py):
subscribers that reconnect left Strawberry's "Exception in worker task" tracebacks in the
server log (graphql-transport-ws), and on graphql-ws asyncio's "Task exception was never
retrieved" (api/transport.py handles both).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import websockets

from tests.e2e.conftest import graphql_client, running_server

REPLAY = "subscription { taskEvents(after: 0) { id taskId type } }"
# protocol -> (the message that starts an operation, the message that carries an event)
PROTOCOLS = {"graphql-transport-ws": ("subscribe", "next"), "graphql-ws": ("start", "data")}


async def subscribe(url: str, protocol: str) -> websockets.ClientConnection:
    ws = await websockets.connect(url, subprotocols=[websockets.Subprotocol(protocol)], proxy=None)
    await ws.send(json.dumps({"type": "connection_init", "payload": {}}))
    while (message := json.loads(await asyncio.wait_for(ws.recv(), 30)))["type"] == "ka":
        pass
    assert message["type"] == "connection_ack", message
    await ws.send(json.dumps({"type": PROTOCOLS[protocol][0], "id": "1", "payload": {"query": REPLAY}}))
    return ws


async def next_event(ws: websockets.ClientConnection, protocol: str) -> None:
    while (message := json.loads(await asyncio.wait_for(ws.recv(), 30)))["type"] == "ka":
        pass
    assert message["type"] == PROTOCOLS[protocol][1], message


@pytest.mark.timeout(180)
@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_subscribers_dropping_mid_stream_leave_no_error_in_the_log(tmp_path: Path, protocol: str) -> None:
    async with running_server(f"sqlite+aiosqlite:///{tmp_path / 'drop.db'}", tmp_path) as server:
        async with graphql_client(server.url) as gql:
            project = (await gql.execute('mutation { createProject(input: {name: "drop"}) { id } }'))["createProject"][
                "id"
            ]
            tasks = [{"title": f"t{i}", "taskType": "x"} for i in range(1000)]
            await gql.execute(
                "mutation($p: ID!, $t: [CreateTaskInput!]!) { createTasks(projectId: $p, tasks: $t) { id } }",
                p=project,
                t=tasks,
            )
            url = server.url.replace("http://", "ws://") + "/graphql"
            for _ in range(10):
                # read one event of the long replay, then drop the TCP connection without a
                # close handshake, as a killed process does
                ws = await subscribe(url, protocol)
                await next_event(ws, protocol)
                ws.transport.abort()
            # the server goes on serving: a new subscriber replays the whole log
            ws = await subscribe(url, protocol)
            for _ in range(1000):
                await next_event(ws, protocol)
            await ws.close()
            assert (await gql.execute("{ __typename }"))["__typename"] == "Query"
    log = server.log_path.read_text(errors="replace")  # the server has stopped: its whole log
    assert "Traceback" not in log, log[-4000:]
    assert " ERROR " not in log, log[-4000:]
