"""taskEvents fan-out (events/fanout.py, api/broadcast.py) over real WebSockets against a
real uvicorn server: live subscribers of one selection, filter and caller ride one group,
and still every subscriber gets every event once, in order, with what its own selection
asks for; joining, unsubscribing and closing mid-stream; a subscriber that stops reading
is let go and served alone without loss, and holds nobody up. /health's `fanOut` says who
rides. tests/events/test_fan_out.py checks the same rules in-process."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import websockets

from tests import factories
from tests.e2e.conftest import GraphQLClient, Server, graphql_client, running_server
from tests.e2e.test_subscriptions_ws import (
    DEADLINE,
    LEGACY_WS,
    TRANSPORT_WS,
    Collector,
    health,
    last_event_id,
    poll,
    ws_session,
    ws_url,
)

pytestmark = pytest.mark.timeout(300)

FULL = "id taskId projectId type fromStatus toStatus actor createdAt"
TASK_EVENTS = "subscription($after: ID, $p: ID) { taskEvents(after: $after, projectId: $p) { %s } }"
API_KEY = "fan-out-admin-key-0123456789"


class Conn:
    """One graphql-transport-ws connection read in the background: every message about an
    operation, by operation id, in arrival order (pings answered)."""

    def __init__(self, ws: websockets.ClientConnection):
        self.ws = ws
        self.by_op: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self._reader = asyncio.create_task(self._read())

    @classmethod
    @contextlib.asynccontextmanager
    async def open(
        cls,
        server: Server,
        *,
        payload: dict[str, Any] | None = None,
        sock: socket.socket | None = None,
        compression: str | None = None,
    ) -> AsyncIterator[Conn]:
        """Without `compression` the client offers none (the test servers would accept
        permessage-deflate, and a compressed connection never rides)."""
        url = ws_url(server)
        async with websockets.connect(
            url, subprotocols=[TRANSPORT_WS], open_timeout=10, close_timeout=2, sock=sock, compression=compression
        ) as ws:
            await ws.send(json.dumps({"type": "connection_init", "payload": payload or {}}))
            ack = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert ack["type"] == "connection_ack", ack
            conn = cls(ws)
            try:
                yield conn
            finally:
                conn._reader.cancel()
                with contextlib.suppress(asyncio.CancelledError, websockets.ConnectionClosed):
                    await conn._reader

    async def _read(self) -> None:
        async for raw in self.ws:
            message = json.loads(raw)
            if message["type"] == "ping":
                await self.ws.send(json.dumps({"type": "pong"}))
            elif "id" in message:
                self.by_op[message["id"]].append(message)

    async def subscribe(self, op: str, fields: str = FULL, **variables: Any) -> None:
        query = TASK_EVENTS % fields
        await self.ws.send(
            json.dumps({"id": op, "type": "subscribe", "payload": {"query": query, "variables": variables}})
        )

    async def complete(self, op: str) -> None:
        await self.ws.send(json.dumps({"id": op, "type": "complete"}))

    def events(self, op: str) -> list[dict[str, Any]]:
        """The events of `op`'s `next` messages; fails on anything else (errors, complete)."""
        out = []
        for message in self.by_op[op]:
            assert message["type"] == "next", message
            assert "errors" not in message["payload"], message
            out.append(message["payload"]["data"]["taskEvents"])
        return out

    def ids(self, op: str) -> list[int]:
        return [int(event["id"]) for event in self.events(op)]


def small_buffer_socket(server: Server) -> socket.socket:
    """A connection to the server with a 4 KB receive buffer: paused, it backs the server's
    writes up after a few events."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", int(server.url.rsplit(":", 1)[1])))
    return sock


async def fan_out(server: Server) -> dict[str, int]:
    return dict((await health(server))["fanOut"])


async def until_riding(server: Server, gql: GraphQLClient, project_id: str, riders: int) -> None:
    """Write an event at a time until `riders` subscribers ride: a subscriber joins its group
    once it has caught up and the group is idle."""

    async def riding() -> bool:
        if (await fan_out(server))["riders"] >= riders:
            return True
        await factories.task(gql, project_id=project_id, title="warm-up")
        return False

    assert await poll(riding, within=DEADLINE, interval=0.2), f"not {riders} riders: {await fan_out(server)}"


async def until_received(conns: list[tuple[Conn, str]], last: int) -> None:
    assert await poll(lambda: all(c.ids(op)[-1:] == [last] for c, op in conns), within=DEADLINE), [
        c.ids(op)[-3:] for c, op in conns
    ]


async def events_of(gql: GraphQLClient, project_id: str | None, after: int, fields: str = FULL) -> list[dict[str, Any]]:
    """The log (of one project, or all) after `after`, with `fields`, through the `events`
    query, page by page (`fields` must hold id)."""
    query = f"query($after: ID, $p: ID) {{ events(after: $after, projectId: $p, first: 500) {{ {fields} }} }}"
    out: list[dict[str, Any]] = []
    while True:
        page = (await gql.execute(query, after=str(after), p=project_id))["events"]
        out += page
        if len(page) < 500:
            return out
        after = int(page[-1]["id"])


async def create_tasks(gql: GraphQLClient, project_id: str, count: int, **extra: Any) -> None:
    """`count` CREATED events in one transaction (one horizon for all of them)."""
    await gql.execute(
        "mutation($p: ID!, $t: [CreateTaskInput!]!) { createTasks(projectId: $p, tasks: $t) { id } }",
        p=project_id,
        t=[{"title": f"burst {n}", "taskType": "research", **extra} for n in range(count)],
    )


@pytest.fixture(scope="module")
async def server(e2e_pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Server]:
    async with running_server(e2e_pg_url, tmp_path_factory.mktemp("fan-out")) as running:
        yield running


@pytest.fixture
async def gql(server: Server) -> AsyncIterator[GraphQLClient]:
    async with graphql_client(server.url) as client:
        yield client


class TestOneGroup:
    async def test_every_rider_gets_every_event_once_in_order_as_a_lone_subscriber_does(
        self, server: Server, gql: GraphQLClient
    ) -> None:
        """18 operations (3 connections carry two each) ride one group. Two subscribers of
        the same selection never ride and are served alone: one on a connection that
        negotiated compression (its frames cannot be written directly), and one on legacy
        graphql-ws, the reference for what each event looks like."""
        project_id = await factories.project(gql, name=f"one-{uuid.uuid4().hex[:8]}")
        after = int(await last_event_id(gql))
        async with contextlib.AsyncExitStack() as stack:
            ops: list[tuple[Conn, str]] = []
            for n in range(15):
                conn = await stack.enter_async_context(Conn.open(server))
                for op in ["a", "b"] if n < 3 else ["a"]:
                    await conn.subscribe(op, after=str(after), p=project_id)
                    ops.append((conn, op))
            compressed = await stack.enter_async_context(Conn.open(server, compression="deflate"))
            await compressed.subscribe("c", after=str(after), p=project_id)
            legacy_session = await stack.enter_async_context(ws_session(server, LEGACY_WS))
            reference = Collector(legacy_session, TASK_EVENTS % FULL, after=str(after), p=project_id)
            await until_riding(server, gql, project_id, len(ops))
            state = await fan_out(server)
            assert state == {"groups": 1, "riders": len(ops)}, state
            for _ in range(4):
                await create_tasks(gql, project_id, 5)
            await factories.task(gql, project_id=project_id, title="last")
            expected = await events_of(gql, project_id, after)
            last = int(expected[-1]["id"])
            await until_received([*ops, (compressed, "c")], last)
            assert await reference.wait_for_id(last, within=DEADLINE)
            assert await fan_out(server) == {"groups": 1, "riders": len(ops)}
            await reference.stop()
        assert reference.events == expected
        assert compressed.events("c") == expected
        for conn, op in ops:
            assert conn.events(op) == expected, f"operation {op}"


class TestGroupsBySelectionFilterAndCaller:
    async def test_each_subscriber_gets_its_own_filter_selection_and_callers_results(
        self, e2e_pg_url: str, tmp_path: Path
    ) -> None:
        admin = {"X-API-Key": API_KEY}
        async with (
            running_server(e2e_pg_url, tmp_path, API_KEY=API_KEY) as server,
            graphql_client(server.url) as gql,
        ):
            gql.http.headers.update(admin)
            suffix = uuid.uuid4().hex[:8]
            a = await factories.project(gql, name=f"a-{suffix}")
            b = await factories.project(gql, name=f"b-{suffix}")
            tokens = [(await factories.agent(gql, name=f"{who}-{suffix}"))["token"] for who in ("one", "two")]
            after = int(await last_event_id(gql))
            short = "id type"
            # (credentials, fields, project) of each subscriber; equal triples share a group.
            plan = [
                (admin, FULL, a),
                (admin, FULL, a),
                ({"Authorization": f"Bearer {tokens[0]}"}, FULL, a),
                ({"Authorization": f"Bearer {tokens[0]}"}, FULL, a),
                ({"Authorization": f"Bearer {tokens[1]}"}, FULL, a),
                (admin, short, a),
                (admin, short, a),
                (admin, FULL, b),
                (admin, FULL, b),
                (admin, FULL, None),
                (admin, FULL, None),
            ]
            groups = len({(json.dumps(creds), fields, project) for creds, fields, project in plan})
            async with contextlib.AsyncExitStack() as stack:
                subs = []
                for creds, fields, project in plan:
                    conn = await stack.enter_async_context(Conn.open(server, payload=creds))
                    await conn.subscribe("s", fields, after=str(after), p=project)
                    subs.append((conn, fields, project))

                async def riding() -> bool:
                    if (await fan_out(server))["riders"] >= len(plan):
                        return True
                    await factories.task(gql, project_id=a, title="warm-up a")
                    await factories.task(gql, project_id=b, title="warm-up b")
                    return False

                assert await poll(riding, within=DEADLINE, interval=0.2), await fan_out(server)
                assert await fan_out(server) == {"groups": groups, "riders": len(plan)}
                for n in range(6):
                    await factories.task(gql, project_id=a if n % 2 else b, title=f"t{n}")
                everything = await events_of(gql, None, after)
                last = int(everything[-1]["id"])
                last_of = {p: int((await events_of(gql, p, after))[-1]["id"]) for p in (a, b)}
                for conn, _fields, project in subs:
                    await until_received([(conn, "s")], last if project is None else last_of[project])
                for conn, fields, project in subs:
                    assert conn.events("s") == await events_of(gql, project, after, fields)


class TestJoiningAndLeaving:
    async def test_subscribers_join_complete_and_close_while_events_stream(
        self, server: Server, gql: GraphQLClient
    ) -> None:
        project_id = await factories.project(gql, name=f"churn-{uuid.uuid4().hex[:8]}")
        start = int(await last_event_id(gql))
        async with contextlib.AsyncExitStack() as stack:
            first = await stack.enter_async_context(Conn.open(server))
            second = await stack.enter_async_context(Conn.open(server))
            await first.subscribe("s", after=str(start), p=project_id)
            await second.subscribe("s", after=str(start), p=project_id)
            await second.subscribe("leaving", after=str(start), p=project_id)
            await until_riding(server, gql, project_id, 3)
            for _ in range(5):
                await factories.task(gql, project_id=project_id, title="before")
            middle = int(await last_event_id(gql))

            # A subscriber joins from a cursor in the past: it replays, then rides.
            late = await stack.enter_async_context(Conn.open(server))
            await late.subscribe("s", after=str(start + 3), p=project_id)
            # One unsubscribes: once the server has handled that (it handles a connection's
            # messages in order, so a later subscribe answering proves it), nothing more.
            await second.complete("leaving")
            await second.subscribe("probe", after=str(middle - 1), p=project_id)
            assert await poll(lambda: bool(second.by_op["probe"]), within=DEADLINE)
            left_with = second.ids("leaving")
            # One connection closes.
            closing = await stack.enter_async_context(Conn.open(server))
            await closing.subscribe("s", after=str(middle), p=project_id)
            await until_riding(server, gql, project_id, 5)
            await closing.ws.close()

            for _ in range(5):
                await factories.task(gql, project_id=project_id, title="after")
            expected = await events_of(gql, project_id, start)
            last = int(expected[-1]["id"])
            await until_received([(first, "s"), (second, "s"), (late, "s"), (second, "probe")], last)
            assert second.ids("leaving") == left_with
        ids = [int(event["id"]) for event in expected]
        assert first.events("s") == expected
        assert second.events("s") == expected
        assert late.ids("s") == [i for i in ids if i > start + 3]
        assert second.ids("probe") == [i for i in ids if i >= middle]
        assert left_with == ids[: len(left_with)], "what it got before leaving is the log's beginning"
        assert await poll(lambda: _no_riders(server), within=DEADLINE), await fan_out(server)


async def _no_riders(server: Server) -> bool:
    return await fan_out(server) == {"groups": 0, "riders": 0}


class TestSlowSubscriber:
    async def test_a_subscriber_that_stops_reading_is_served_alone_without_loss_or_holding_others_up(
        self, e2e_pg_url: str, tmp_path: Path
    ) -> None:
        """Its socket fills (a small receive buffer, reading paused), the server's writes
        back up, and the group lets it go; the others get every event meanwhile. Reading
        again, it gets every event once, in order, and rides again."""
        async with (
            running_server(e2e_pg_url, tmp_path, MAX_SUBSCRIBER_LAG="1000000") as server,
            graphql_client(server.url) as gql,
        ):
            project_id = await factories.project(gql, name=f"slow-{uuid.uuid4().hex[:8]}")
            after = int(await last_event_id(gql))
            fields = "id type task { id description }"
            sock = small_buffer_socket(server)
            async with contextlib.AsyncExitStack() as stack:
                slow = await stack.enter_async_context(Conn.open(server, sock=sock))
                others = [await stack.enter_async_context(Conn.open(server)) for _ in range(3)]
                for conn in [slow, *others]:
                    await conn.subscribe("s", fields, after=str(after), p=project_id)
                await until_riding(server, gql, project_id, 4)
                slow.ws.transport.pause_reading()
                bursts = 0

                async def let_go() -> bool:
                    nonlocal bursts
                    if (await fan_out(server))["riders"] <= 3:
                        return True
                    await create_tasks(gql, project_id, 200, description="x" * 5000)
                    bursts += 1
                    return False

                assert await poll(let_go, within=120, interval=0.1), await fan_out(server)
                expected_now = await events_of(gql, project_id, after, fields)
                await until_received([(conn, "s") for conn in others], int(expected_now[-1]["id"]))
                behind = len(expected_now) - len(slow.ids("s"))
                assert behind > 0, "it stopped reading, so it cannot have everything yet"
                slow.ws.transport.resume_reading()
                await until_received([(slow, "s")], int(expected_now[-1]["id"]))
                await until_riding(server, gql, project_id, 4)
                await factories.task(gql, project_id=project_id, title="last")
                expected = await events_of(gql, project_id, after, fields)
                await until_received([(conn, "s") for conn in [slow, *others]], int(expected[-1]["id"]))
            print(f"slow subscriber: let go after {bursts} bursts of 200 events, {behind} events behind")
            for conn in [slow, *others]:
                assert conn.events("s") == expected

    async def test_a_rider_let_go_far_behind_is_cut_off_with_its_cursor_and_resumes_without_loss(
        self, e2e_pg_url: str, tmp_path: Path
    ) -> None:
        """Once let go, a subscriber is back under MAX_SUBSCRIBER_LAG: more than that many
        events behind, it is ended with an error carrying its cursor, and resuming from
        that cursor misses and repeats nothing."""
        lag = 50
        async with (
            running_server(e2e_pg_url, tmp_path, MAX_SUBSCRIBER_LAG=str(lag)) as server,
            graphql_client(server.url) as gql,
        ):
            project_id = await factories.project(gql, name=f"cut-{uuid.uuid4().hex[:8]}")
            after = int(await last_event_id(gql))
            fields = "id type task { id description }"
            sock = small_buffer_socket(server)
            async with Conn.open(server, sock=sock) as slow, Conn.open(server) as other:
                for conn in (slow, other):
                    await conn.subscribe("s", fields, after=str(after), p=project_id)
                await until_riding(server, gql, project_id, 2)
                slow.ws.transport.pause_reading()

                async def let_go() -> bool:
                    if (await fan_out(server))["riders"] <= 1:
                        return True
                    await create_tasks(gql, project_id, 200, description="x" * 5000)
                    return False

                assert await poll(let_go, within=120, interval=0.1), await fan_out(server)
                await create_tasks(gql, project_id, 4 * lag, description="x")
                slow.ws.transport.resume_reading()
                assert await poll(lambda: any(map(_ended, slow.by_op["s"])), within=DEADLINE)
            ending = next(n for n, message in enumerate(slow.by_op["s"]) if _ended(message))
            ended = slow.by_op["s"][ending]
            errors = ended["payload"] if ended["type"] == "error" else ended["payload"]["errors"]
            assert errors[0]["extensions"]["code"] == "CONFLICT", errors
            cursor = int(errors[0]["extensions"]["cursor"])
            seen = [int(m["payload"]["data"]["taskEvents"]["id"]) for m in slow.by_op["s"][:ending]]
            assert cursor == (seen[-1] if seen else after), "the cursor is that of the last event it was sent"
            expected = await events_of(gql, project_id, after, "id")
            async with Conn.open(server) as again:
                await again.subscribe("s", "id", after=str(cursor), p=project_id)
                await until_received([(again, "s")], int(expected[-1]["id"]))
            assert seen + again.ids("s") == [int(event["id"]) for event in expected]


def _ended(message: dict[str, Any]) -> bool:
    """An error ending the operation (`error`, or a `next` carrying errors)."""
    return message["type"] == "error" or bool(message.get("payload", {}).get("errors"))
