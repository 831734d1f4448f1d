"""The in-memory tail of the log: live subscribers share one query per horizon advance, and a
subscriber older than the window falls back to the database without losing anything."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from sqlalchemy import event
from sqlalchemy.exc import ProgrammingError

from task_service.db.models import TaskEvent
from task_service.events import replay
from task_service.events.bus import Listener
from task_service.events.tail import LogTail
from tests import factories as f
from tests.events.helpers import TASK_EVENTS, Collector, Sub, all_events, assert_exact_log, wait_settled


@contextlib.contextmanager
def log_reads(services):
    """Counts the SELECTs that read task_events while the block runs."""
    seen: list[str] = []

    def count(conn, cursor, statement, parameters, context, executemany):
        lowered = statement.lower()
        if lowered.lstrip().startswith("select") and "from task_events" in lowered:
            seen.append(statement)

    sync_engine = services.engine.sync_engine
    event.listen(sync_engine, "before_cursor_execute", count)
    try:
        yield seen
    finally:
        event.remove(sync_engine, "before_cursor_execute", count)


class TestSharedTail:
    async def test_many_live_subscribers_cost_one_log_query_per_change(self, gql, schema, services):
        pid = await f.project(gql)
        subscribers, changes = 40, 8
        async with contextlib.AsyncExitStack() as stack:
            collectors = []
            for _ in range(subscribers):
                sub = await stack.enter_async_context(Sub(schema, services, TASK_EVENTS))
                collectors.append(await stack.enter_async_context(Collector(sub)))
            await wait_settled(services, at_least=subscribers)
            with log_reads(services) as reads:
                for i in range(changes):
                    await f.task(gql, project_id=pid, title=f"t{i}")
                    await wait_settled(services, at_least=subscribers)
            for collector in collectors:
                await collector.wait_for_count(changes)
        # Without the shared tail each subscriber would read the log once per change (320).
        assert len(reads) <= 2 * changes, f"{len(reads)} log reads for {changes} changes"
        expected = await all_events(gql)
        for collector in collectors:
            assert_exact_log(collector.values, expected[-changes:])

    async def test_subscriber_behind_the_window_reads_the_database_and_joins_live(self, gql, schema, services):
        services.tail = LogTail(services.sessionmaker, capacity=3)
        pid = await f.project(gql)
        for i in range(12):
            await f.task(gql, project_id=pid, title=f"old{i}")
        await services.tail.refresh()
        async with Sub(schema, services, TASK_EVENTS, after="0") as sub, Collector(sub) as got:
            for i in range(10):
                await f.task(gql, project_id=pid, title=f"new{i}")
            await got.wait_for_count(22)
            expected = await all_events(gql)
            assert len(expected) == 22
            assert_exact_log(got.values, expected)
        # Trimmed to capacity after each refresh: the window holds exactly the newest 3.
        assert services.tail.end - services.tail.start == 3

    async def test_subscriber_behind_a_trimmed_window_reads_the_database(self, gql, schema, services):
        """A cursor that was inside the window before a refresh trimmed it is behind the
        window now: its events left memory, so it must read them from the log."""
        services.tail = LogTail(services.sessionmaker, capacity=3)
        pid = await f.project(gql)
        await f.task(gql, project_id=pid, title="before")
        await services.tail.refresh()  # the window starts at the log's end
        opened_at = services.tail.end
        for i in range(8):
            await f.task(gql, project_id=pid, title=f"t{i}")
        await services.tail.refresh()
        tail = services.tail
        assert (tail.end - tail.start, tail.end - opened_at) == (3, 8)
        cursor = opened_at + 2  # inside the window as it was, behind it as it is
        assert not tail.covers(cursor)
        async with Sub(schema, services, TASK_EVENTS, after=str(cursor)) as sub:
            got = await sub.take(6)
        expected = [e for e in await all_events(gql) if int(e["id"]) > cursor]
        assert_exact_log(got, expected)

    async def test_rows_read_longer_ago_than_the_window_leave_it(self, gql, schema, services):
        """The window is bounded by age as well as by count: rows read more than `max_age`
        seconds before a refresh leave memory (B9: a count alone took minutes to fill), and
        a subscriber whose cursor they covered reads them from the log."""
        now = [0.0]
        services.tail = LogTail(services.sessionmaker, max_age=60, clock=lambda: now[0])
        pid = await f.project(gql)
        await f.task(gql, project_id=pid, title="before")
        await services.tail.refresh()  # the window starts at the log's end
        opened_at = services.tail.end
        for i in range(5):
            await f.task(gql, project_id=pid, title=f"old{i}")
        await services.tail.refresh()
        tail = services.tail
        assert (tail.start, tail.end - opened_at) == (opened_at, 5)
        now[0] = 59.0  # still inside the window: nothing leaves
        await f.task(gql, project_id=pid, title="mid")
        await services.tail.refresh()
        assert (tail.start, tail.end - opened_at) == (opened_at, 6)
        now[0] = 61.0  # the first five were read 61 s ago, the sixth 2 s ago
        for i in range(2):
            await f.task(gql, project_id=pid, title=f"new{i}")
        await services.tail.refresh()
        assert (tail.start - opened_at, tail.end - opened_at) == (5, 8)
        cursor = opened_at + 2
        assert not tail.covers(cursor)
        async with Sub(schema, services, TASK_EVENTS, after=str(cursor)) as sub:
            got = await sub.take(6)
        expected = [e for e in await all_events(gql) if int(e["id"]) > cursor]
        assert_exact_log(got, expected)

    async def test_filtered_subscriber_on_the_tail_matches_the_filtered_log(self, gql, schema, services):
        p1 = await f.project(gql, name="P1")
        p2 = await f.project(gql, name="P2")
        async with (
            Sub(schema, services, TASK_EVENTS, projectId=p1) as sub,
            Collector(sub) as got,
        ):
            await wait_settled(services)
            for i in range(6):
                await f.task(gql, project_id=p1 if i % 2 else p2, title=f"t{i}")
            await wait_settled(services)
            expected = await all_events(gql, projectId=p1)
            await got.wait_for_count(len(expected))
        assert_exact_log(got.values, expected)


class TestLogTailUnit:
    def _tail_with(self, seqs: list[int]) -> LogTail:
        tail = LogTail(None, capacity=100)  # type: ignore[arg-type]
        tail.start, tail.end = seqs[0] - 1, seqs[-1]
        tail._seqs = list(seqs)
        tail._rows = [TaskEvent(seq=s, task_id=s % 2, project_id=1, type="CREATED") for s in seqs]
        return tail

    def test_read_stops_at_upto_and_moves_the_cursor_past_filtered_events(self):
        tail = self._tail_with(list(range(1, 11)))
        rows, cursor = tail.read(2, lambda e: e.task_id == 1, 100, upto=8)
        assert [r.seq for r in rows] == [3, 5, 7]
        assert cursor == 8

    def test_read_returns_at_most_limit_and_the_cursor_of_the_last_row(self):
        tail = self._tail_with(list(range(1, 11)))
        rows, cursor = tail.read(0, lambda e: True, 4, upto=10)
        assert [r.seq for r in rows] == [1, 2, 3, 4]
        assert cursor == 4

    def test_covers_only_cursors_inside_the_window(self):
        tail = self._tail_with(list(range(5, 11)))
        assert not tail.covers(3)
        assert tail.covers(4)
        assert tail.covers(10)
        assert not tail.covers(11)


class TestOutageRetries:
    async def test_an_unreachable_database_is_retried_until_it_answers(self):
        calls = []

        async def read() -> str:
            calls.append(1)
            if len(calls) < 3:
                raise ConnectionRefusedError(111, "Connect call failed")
            return "rows"

        assert await replay.until_answered(read) == "rows"
        assert len(calls) == 3

    async def test_a_failing_statement_is_not_retried(self):
        calls = []

        async def read() -> None:
            calls.append(1)
            raise ProgrammingError("SELECT nope", {}, Exception("column nope does not exist"))

        with pytest.raises(ProgrammingError):
            await replay.until_answered(read)
        assert len(calls) == 1


class TestWakeWhenRead:
    async def test_waiting_subscribers_are_woken_once_the_tail_holds_the_new_horizon(self, gql, services):
        pid = await f.project(gql)
        await services.tail.refresh()
        found: list[bool] = []

        async def follower() -> None:
            with services.bus.listen(defer=services.tail.wake_when_read) as listener:
                assert await listener.wait(30)
                found.append(services.tail.end >= listener.horizon > 0)

        followers = [asyncio.create_task(follower()) for _ in range(20)]
        await asyncio.sleep(0.05)
        with log_reads(services) as reads:
            await f.task(gql, project_id=pid)
            await asyncio.wait_for(asyncio.gather(*followers), 10)
        assert found == [True] * 20
        refreshes = [statement for statement in reads if "task_events.seq >" in statement]
        assert len(refreshes) == 1  # one refresh for all of them

    async def test_a_failed_refresh_wakes_them_to_read_on_their_own(self):
        # until_answered then retries for each subscriber, as before the tail woke them.
        def unreachable():
            raise OSError("connection refused")

        tail = LogTail(unreachable)
        listener = Listener(defer=tail.wake_when_read)
        waiter = asyncio.create_task(listener.wait(30))
        await asyncio.sleep(0.01)
        listener.advance(1)
        assert await asyncio.wait_for(waiter, 5) is True
        assert not listener.deferred
