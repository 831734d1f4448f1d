"""Subscriptions over real WebSockets against a real uvicorn server on PostgreSQL: both
protocols, live delivery in order, resume with `after`, keep-alive, the per-connection limit,
cleanup of closed sockets, and the cut-off of a subscriber that falls behind.

The helpers here (WebSocket clients, the scripted lifecycle, event-log reads, /proc socket
lookups) are shared with test_multiprocess.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from gql import Client, GraphQLRequest
from gql.client import AsyncClientSession
from gql.transport.exceptions import TransportQueryError
from gql.transport.websockets import WebsocketsTransport

from tests import factories
from tests.e2e.conftest import GraphQLClient, Server, graphql_client, running_server

pytestmark = pytest.mark.timeout(300)

TRANSPORT_WS = WebsocketsTransport.GRAPHQLWS_SUBPROTOCOL  # "graphql-transport-ws"
LEGACY_WS = WebsocketsTransport.APOLLO_SUBPROTOCOL  # "graphql-ws"
# Deadlines for what must happen, generous for a loaded 2-core machine; latency figures are
# bench/'s business (bench/b3_fanout.py), not the tests'.
DEADLINE = 30.0
EVENT_FIELDS = "id taskId projectId type fromStatus toStatus"
TASK_EVENTS = f"""subscription($after: ID, $p: ID, $t: ID) {{
  taskEvents(after: $after, projectId: $p, taskId: $t) {{ {EVENT_FIELDS} }}
}}"""
EVENTS_PAGE = "query($after: ID, $p: ID) { events(after: $after, projectId: $p, first: 500) { id } }"
LIFECYCLE_TYPES = ["CREATED", "CLAIMED", "STARTED", "PROGRESS", "SUBMITTED", "APPROVED"]


# -- helpers -----------------------------------------------------------------------------


def ws_url(server: Server) -> str:
    return server.url.replace("http://", "ws://", 1) + "/graphql"


async def poll(check: Callable[[], Awaitable[bool] | bool], *, within: float, interval: float = 0.05) -> bool:
    """True as soon as `check()` is true, False when `within` seconds pass first."""
    deadline = time.monotonic() + within
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(interval)


async def health(server: Server) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=server.url, timeout=10, trust_env=False) as http:
        response = await http.get("/health")
    assert response.status_code == 200, response.text
    return response.json()


async def all_event_ids(gql: GraphQLClient, *, project_id: str | None = None) -> list[int]:
    """Every stamped event id (optionally of one project), through the `events` query."""
    ids: list[int] = []
    after: str | None = None
    for _ in range(10_000):
        page = (await gql.execute(EVENTS_PAGE, after=after, p=project_id))["events"]
        ids += [int(event["id"]) for event in page]
        if len(page) < 500:
            return ids
        after = page[-1]["id"]
    raise AssertionError("the events query never ended")


async def last_event_id(gql: GraphQLClient) -> str:
    ids = await all_event_ids(gql)
    return str(ids[-1]) if ids else "0"


@contextlib.asynccontextmanager
async def ws_session(server: Server, protocol: str = TRANSPORT_WS) -> AsyncIterator[AsyncClientSession]:
    """A gql session over one WebSocket connection speaking exactly `protocol`."""
    transport = WebsocketsTransport(
        url=ws_url(server), subprotocols=[protocol], connect_timeout=10, close_timeout=5, ack_timeout=10
    )
    async with Client(transport=transport, fetch_schema_from_transport=False) as session:
        assert transport.subprotocol == protocol
        yield session


class Collector:
    """Runs one subscription in a task and records each result."""

    def __init__(self, session: AsyncClientSession, query: str, *, stop_after: int | None = None, **variables: Any):
        self.events: list[dict[str, Any]] = []
        self.error: TransportQueryError | None = None
        self._stop_after = stop_after
        self._task = asyncio.create_task(self._run(session, GraphQLRequest(query, variable_values=variables)))

    async def _run(self, session: AsyncClientSession, request: GraphQLRequest) -> None:
        try:
            async for data in session.subscribe(request):
                (value,) = data.values()
                self.events.append(value)
                if self._stop_after is not None and len(self.events) >= self._stop_after:
                    return
        except TransportQueryError as exc:
            self.error = exc

    @property
    def ids(self) -> list[int]:
        return [int(event["id"]) for event in self.events]

    @property
    def done(self) -> bool:
        return self._task.done()

    async def wait_for_count(self, count: int, within: float) -> bool:
        return await poll(lambda: len(self.events) >= count or self.done, within=within, interval=0.005)

    async def wait_for_id(self, last_id: int, within: float) -> bool:
        return await poll(lambda: (bool(self.ids) and self.ids[-1] >= last_id) or self.done, within=within)

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


def assert_exact_log(received: list[int], expected: list[int]) -> None:
    """No gaps, no duplicates, ascending: exactly the `events` query's list."""
    assert len(received) == len(set(received)), (
        f"duplicates: {sorted(i for i in received if received.count(i) > 1)[:10]}"
    )
    assert received == sorted(received), "not in id order"
    missing = sorted(set(expected) - set(received))
    extra = sorted(set(received) - set(expected))
    assert (missing, extra) == ([], []), f"missing {missing[:20]} ({len(missing)}), extra {extra[:20]} ({len(extra)})"
    assert received == expected


async def run_lifecycle(writer: GraphQLClient, subscriber: AsyncClientSession) -> None:
    """createTask, claimTask, startTask, reportProgress, submitTask, reviewTask(approve) over
    HTTP, each followed by waiting for its event on the subscription: every event arrives
    live, once, in order."""
    suffix = uuid.uuid4().hex[:8]
    project_id = await factories.project(writer, name=f"live-{suffix}")
    worker, editor = f"worker-{suffix}", f"editor-{suffix}"
    await factories.agent(writer, name=worker, skills=["research"])
    await factories.agent(writer, name=editor)
    collector = Collector(subscriber, TASK_EVENTS, after=await last_event_id(writer), p=project_id)
    task_id: str = ""

    async def create() -> None:
        nonlocal task_id
        task_id = (await factories.task(writer, project_id=project_id))["id"]

    steps: list[Callable[[], Awaitable[Any]]] = [
        create,
        lambda: factories.claim(writer, task_id=task_id, agent=worker),
        lambda: factories.transition(writer, "startTask", id=task_id, agent=worker),
        lambda: factories.transition(writer, "reportProgress", id=task_id, agent=worker, progress=50, message="half"),
        lambda: factories.transition(writer, "submitTask", id=task_id, agent=worker, summary="done"),
        lambda: factories.transition(writer, "reviewTask", id=task_id, reviewer=editor, approved=True),
    ]
    try:
        for number, step in enumerate(steps, start=1):
            await step()
            assert await collector.wait_for_count(number, within=DEADLINE), (
                f"event {number} never arrived; got {collector.events}, error {collector.error}"
            )
    finally:
        await collector.stop()
    assert [event["type"] for event in collector.events] == LIFECYCLE_TYPES
    assert {event["taskId"] for event in collector.events} == {task_id}
    assert collector.ids == sorted(collector.ids)


class RawWs:
    """graphql-transport-ws (or legacy graphql-ws) spoken by hand over `websockets`."""

    def __init__(self, conn: websockets.ClientConnection):
        self.conn = conn

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(cls, server: Server, protocol: str = TRANSPORT_WS, **kwargs: Any) -> AsyncIterator[RawWs]:
        async with websockets.connect(
            ws_url(server),
            subprotocols=[protocol],
            open_timeout=10,
            close_timeout=2,
            **kwargs,  # type: ignore[list-item]
        ) as conn:
            assert conn.subprotocol == protocol
            yield cls(conn)

    async def send(self, message: dict[str, Any]) -> None:
        await self.conn.send(json.dumps(message))

    async def recv(self, within: float) -> dict[str, Any]:
        return json.loads(await asyncio.wait_for(self.conn.recv(), within))

    async def recv_operation(self, within: float) -> dict[str, Any]:
        """The next message about an operation (next, error, complete) within `within`
        seconds, answering the server's keep-alive pings on the way."""
        deadline = time.monotonic() + within
        while True:
            message = await self.recv(max(0.01, deadline - time.monotonic()))
            if message["type"] == "ping":
                await self.send({"type": "pong"})
            elif message["type"] != "pong":
                return message

    async def init(self) -> None:
        await self.send({"type": "connection_init", "payload": {}})
        assert (await self.recv(10))["type"] == "connection_ack"

    async def subscribe(self, op_id: str, query: str, **variables: Any) -> None:
        await self.send({"id": op_id, "type": "subscribe", "payload": {"query": query, "variables": variables}})

    def abort(self) -> None:
        """Drop the TCP connection without a close frame, as a crashed client would."""
        self.conn.transport.abort()


# -- /proc: which TCP connections a process holds (no psutil needed) ----------------------


def tcp_connections(pid: int) -> list[tuple[int, int]]:
    """(local port, remote port) of each established TCP connection of process `pid`."""
    inodes = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in fd_dir.iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    pairs = []
    for table in ("tcp", "tcp6"):
        path = Path(f"/proc/{pid}/net/{table}")
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "01" or fields[9] not in inodes:  # 01 = ESTABLISHED
                continue
            pairs.append((int(fields[1].rsplit(":", 1)[1], 16), int(fields[2].rsplit(":", 1)[1], 16)))
    return pairs


# -- fixtures ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def server(e2e_pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Server]:
    async with running_server(e2e_pg_url, tmp_path_factory.mktemp("ws")) as running:
        yield running


# -- tests -------------------------------------------------------------------------------


class TestLifecycleIsStreamedLive:
    @pytest.mark.parametrize("protocol", [TRANSPORT_WS, LEGACY_WS])
    async def test_every_event_arrives_in_order(self, server: Server, protocol: str) -> None:
        async with graphql_client(server.url) as writer, ws_session(server, protocol) as subscriber:
            await run_lifecycle(writer, subscriber)


class TestResumeWithAfter:
    async def test_reconnecting_with_the_last_id_misses_and_repeats_nothing(self, server: Server) -> None:
        writers, tasks_per_writer, read_first = 20, 3, 30
        suffix = uuid.uuid4().hex[:8]
        async with graphql_client(server.url) as gql:
            project_id = await factories.project(gql, name=f"resume-{suffix}")
            editor = f"editor-{suffix}"
            await factories.agent(gql, name=editor)
            names = [f"w{n}-{suffix}" for n in range(writers)]
            for name in names:
                await factories.agent(gql, name=name, skills=["research"])
            start = await last_event_id(gql)
        written = 0

        async def write(name: str) -> None:
            nonlocal written
            async with graphql_client(server.url) as client:  # its own connections
                for n in range(tasks_per_writer):
                    task_id = (await factories.task(client, project_id=project_id, title=f"{name} {n}"))["id"]
                    await factories.claim(client, task_id=task_id, agent=name)
                    await factories.transition(client, "startTask", id=task_id, agent=name)
                    for progress in (30, 60):
                        await factories.transition(client, "reportProgress", id=task_id, agent=name, progress=progress)
                    await factories.transition(client, "submitTask", id=task_id, agent=name)
                    await factories.transition(client, "reviewTask", id=task_id, reviewer=editor, approved=True)
                    written += 7

        total = writers * tasks_per_writer * 7
        writing = asyncio.gather(*(write(name) for name in names))
        try:
            async with ws_session(server) as session:
                first = Collector(session, TASK_EVENTS, stop_after=read_first, after=start)
                assert await first.wait_for_count(read_first, within=60), f"only {len(first.events)} events"
                await first.stop()
            assert len(first.events) == read_first
            assert first.error is None
            # Stay away while the writers go on, then come back while they still write.
            assert await poll(lambda: written >= total // 2, within=120)
            at_reconnect = written
            async with ws_session(server) as session:
                second = Collector(session, TASK_EVENTS, after=str(first.ids[-1]))
                await writing
                async with graphql_client(server.url) as gql:
                    expected = [i for i in await all_event_ids(gql) if i > int(start)]
                assert len(expected) == total
                assert await second.wait_for_id(expected[-1], within=30), (
                    f"stopped at {second.ids[-1:]} of {expected[-1]}; error {second.error}"
                )
                await second.stop()
        finally:
            with contextlib.suppress(BaseException):
                await writing
        print(
            f"resume: {len(first.ids)} events, reconnect after {first.ids[-1]} while "
            f"{at_reconnect} of {total} changes were written, then {len(second.ids)} more"
        )
        assert_exact_log(first.ids + second.ids, expected)


class TestKeepAlive:
    @pytest.mark.parametrize(("protocol", "keep_alive"), [(TRANSPORT_WS, "ping"), (LEGACY_WS, "ka")])
    async def test_an_idle_connection_gets_keep_alive_messages(
        self, e2e_pg_url: str, tmp_path: Path, protocol: str, keep_alive: str
    ) -> None:
        async with running_server(e2e_pg_url, tmp_path, WS_KEEPALIVE_SECONDS="1") as server:
            async with RawWs.connect(server, protocol, ping_interval=None) as ws:
                await ws.send({"type": "connection_init", "payload": {}})
                assert (await ws.recv(10))["type"] == "connection_ack"
                # Nothing else is sent on this connection: every message is a keep-alive.
                for _ in range(2):
                    message = await ws.recv(DEADLINE)
                    assert message["type"] == keep_alive, message
                    if keep_alive == "ping":
                        await ws.send({"type": "pong"})


class TestSubscriptionLimit:
    async def test_the_fourth_subscription_on_a_connection_is_refused(self, e2e_pg_url: str, tmp_path: Path) -> None:
        async with (
            running_server(e2e_pg_url, tmp_path, MAX_SUBSCRIPTIONS_PER_CONNECTION="3") as server,
            graphql_client(server.url) as gql,
            ws_session(server) as session,
        ):
            project_id = await factories.project(gql, name=f"limit-{uuid.uuid4().hex[:8]}")
            after = await last_event_id(gql)
            running = [Collector(session, TASK_EVENTS, after=after, p=project_id) for _ in range(3)]
            # The three are running once they replay the first event.
            await factories.task(gql, project_id=project_id)
            for collector in running:
                assert await collector.wait_for_count(1, within=10), collector.error
            refused = Collector(session, TASK_EVENTS, after=after, p=project_id)
            assert await poll(lambda: refused.done, within=10)
            assert refused.error is not None
            assert refused.events == []
            assert refused.error.errors is not None
            assert refused.error.errors[0]["extensions"]["code"] == "QUERY_TOO_COMPLEX", refused.error.errors
            # The others keep working, and stopping one frees its slot.
            second = await factories.task(gql, project_id=project_id)
            for collector in running:
                assert await collector.wait_for_count(2, within=10), collector.error
                assert collector.events[1]["taskId"] == second["id"]
            await running[0].stop()
            replacement = Collector(session, TASK_EVENTS, after=after, p=project_id)
            assert await replacement.wait_for_count(2, within=10), replacement.error
            for collector in [*running[1:], replacement]:
                await collector.stop()


SUBSCRIPTION_MIX = [
    ("taskEvents", TASK_EVENTS),
    ("taskEvents", TASK_EVENTS),
    ("taskEvents", TASK_EVENTS),
    ("taskEvents", TASK_EVENTS),
    ("taskChanged", "subscription($p: ID) { taskChanged(projectId: $p) { id status } }"),
    ("taskChanged", "subscription($p: ID) { taskChanged(projectId: $p) { id status } }"),
    ("agentPresence", "subscription { agentPresence { agent { name } status } }"),
    ("agentPresence", "subscription { agentPresence { agent { name } status } }"),
    ("dashboardStats", "subscription($p: ID) { dashboardStats(projectId: $p) { tasks { total } } }"),
    ("dashboardStats", "subscription { dashboardStats { tasks { total } } }"),
]


class TestClosedSocketsFreeEverything:
    async def test_a_thousand_subscriptions_opened_and_closed_leave_no_listener_or_task(self, server: Server) -> None:
        connections, batch = 100, 5  # 1,000 subscriptions, 50 open at a time
        async with graphql_client(server.url) as gql:
            project_id = await factories.project(gql, name=f"leak-{uuid.uuid4().hex[:8]}")
            await factories.agent(gql, name=f"present-{uuid.uuid4().hex[:8]}")
            task_id = (await factories.task(gql, project_id=project_id))["id"]
            baseline = await health(server)
            peak = 0

            async def hold(number: int, delivered: asyncio.Event, release: asyncio.Event) -> int:
                """Open one connection with the whole mix, wait until each subscription has
                delivered something, then close it (every other one abruptly)."""
                async with RawWs.connect(server) as ws:
                    await ws.init()
                    after = await last_event_id(gql)
                    for index, (_, query) in enumerate(SUBSCRIPTION_MIX):
                        await ws.subscribe(str(index), query, after=after, p=project_id)
                    waiting = set(range(len(SUBSCRIPTION_MIX)))
                    deadline = time.monotonic() + 60
                    while waiting and time.monotonic() < deadline:
                        try:
                            message = await ws.recv(max(0.01, deadline - time.monotonic()))
                        except TimeoutError:
                            break
                        assert message["type"] != "error", message
                        if message["type"] == "next":
                            assert "errors" not in message["payload"], message
                            waiting.discard(int(message["id"]))
                    assert not waiting, f"connection {number}: no data for {sorted(waiting)}"
                    delivered.set()
                    await release.wait()
                    if number % 2:
                        ws.abort()
                    else:
                        await ws.send({"id": "0", "type": "complete"})
                return len(SUBSCRIPTION_MIX)

            opened_total = 0
            for start in range(0, connections, batch):
                began = time.monotonic()
                release = asyncio.Event()
                delivered = [asyncio.Event() for _ in range(batch)]
                holders = [asyncio.create_task(hold(start + n, delivered[n], release)) for n in range(batch)]
                try:
                    # Changes until every subscription has delivered something: taskChanged
                    # is live-only, so a change made before it is set up does not reach it.
                    for change in range(20):
                        await gql.execute(
                            "mutation($id: ID!, $t: String!) { updateTask(id: $id, input: {title: $t}) { id } }",
                            id=task_id,
                            t=f"batch {start} change {change}",
                        )
                        if await poll(
                            lambda d=delivered, h=holders: all(e.is_set() for e in d) or any(t.done() for t in h),
                            within=2,
                        ):
                            break
                    peak = max(peak, (await health(server))["bus"]["listeners"])
                    release.set()
                    opened_total += sum(await asyncio.gather(*holders))
                    print(f"batch {start // batch}: {time.monotonic() - began:.1f} s, {change + 1} changes")
                finally:
                    for holder in holders:
                        holder.cancel()
                    await asyncio.gather(*holders, return_exceptions=True)

            async def back_to_baseline() -> bool:
                now = await health(server)
                return (now["bus"]["listeners"], now["tasks"]) == (baseline["bus"]["listeners"], baseline["tasks"])

            settled = await poll(back_to_baseline, within=10, interval=0.2)
            final = await health(server)
        print(
            f"leak check: {opened_total} subscriptions; baseline {baseline['bus']} tasks {baseline['tasks']}; "
            f"peak listeners {peak}; final {final['bus']} tasks {final['tasks']}"
        )
        assert opened_total == connections * len(SUBSCRIPTION_MIX)
        # Each batch held 20 taskEvents + 10 taskChanged + 10 agentPresence listeners (and
        # the dashboardStats producers), so the counter does see subscriptions.
        assert peak >= baseline["bus"]["listeners"] + batch * 8
        assert settled, f"baseline {baseline}, final {final}"


class TestSlowSubscriber:
    async def test_a_subscriber_that_falls_behind_is_cut_off_and_resumes_without_loss(
        self, e2e_pg_url: str, tmp_path: Path
    ) -> None:
        """More than MAX_SUBSCRIBER_LAG events behind, a subscription is ended with an error
        carrying its cursor, and resuming from that cursor loses and repeats nothing.

        Falling behind is made certain, not left to socket buffers (a kernel may buffer
        megabytes for a client that stopped reading, so the server never blocks): the client
        stops reading, then one transaction commits four times the limit. Whatever the server
        had sent by then, its next look at the log finds the subscription that far behind."""
        lag = 5
        query = """subscription($after: ID, $p: ID) {
          taskEvents(after: $after, projectId: $p) { id type taskId }
        }"""
        async with (
            running_server(e2e_pg_url, tmp_path, MAX_SUBSCRIBER_LAG=str(lag)) as server,
            graphql_client(server.url) as gql,
        ):
            project_id = await factories.project(gql, name=f"slow-{uuid.uuid4().hex[:8]}")
            for n in range(3):
                await factories.task(gql, project_id=project_id, title=f"history {n}")
            history = await all_event_ids(gql, project_id=project_id)
            seen: list[int] = []
            ended: dict[str, Any] | None = None
            async with RawWs.connect(server, ping_interval=None) as ws:
                await ws.init()
                await ws.subscribe("slow", query, after="0", p=project_id)
                # Replaying history is not falling behind; once it is read the subscription is live.
                while len(seen) < len(history):
                    reply = await ws.recv_operation(DEADLINE)
                    assert reply["type"] == "next", reply
                    assert "errors" not in reply["payload"], reply
                    seen.append(int(reply["payload"]["data"]["taskEvents"]["id"]))
                assert seen == history
                ws.conn.transport.pause_reading()  # not one more byte is read from the socket
                await gql.execute(
                    "mutation($p: ID!, $t: [CreateTaskInput!]!) { createTasks(projectId: $p, tasks: $t) { id } }",
                    p=project_id,
                    t=[{"title": f"burst {n}", "taskType": "research"} for n in range(4 * lag)],
                )
                expected = await all_event_ids(gql, project_id=project_id)
                assert len(expected) == len(history) + 4 * lag
                ws.conn.transport.resume_reading()
                while ended is None:
                    reply = await ws.recv_operation(DEADLINE)  # TimeoutError: never cut off
                    if reply["type"] == "next" and "errors" not in reply["payload"]:
                        seen.append(int(reply["payload"]["data"]["taskEvents"]["id"]))
                    else:
                        ended = reply
            print(f"slow subscriber: read {len(seen)} of {len(expected)} events, then {json.dumps(ended)[:400]}")
            assert ended["type"] in ("next", "error"), ended
            errors = ended["payload"] if ended["type"] == "error" else ended["payload"]["errors"]
            assert errors[0]["extensions"]["code"] == "CONFLICT", errors
            cursor = int(errors[0]["extensions"]["cursor"])
            assert cursor >= seen[-1], "the cursor must not send the client back over events it has"

            async with ws_session(server) as session:
                again = Collector(session, query, after=str(cursor), p=project_id)
                assert await again.wait_for_id(expected[-1], within=DEADLINE), (
                    f"resumed from {cursor} but stopped at {again.ids[-1:]} of {expected[-1]}: {again.error}"
                )
                await again.stop()
        assert_exact_log(seen + again.ids, expected)
