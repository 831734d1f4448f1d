"""taskEvents fan-out groups (events/fanout.py) with seats that record what they are sent:
every rider gets every event once and in order whether the group or its own loop sends it,
and whenever the group cannot send (a declined write, an event that does not render) the
subscriber carries on alone from its cursor. tests/e2e/test_fan_out.py runs the same rules
over real WebSockets."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Hashable
from functools import partial
from typing import Any

from task_service.db.models import TaskEvent
from task_service.events.fanout import Ride
from task_service.events.replay import EventFilter, follow_events
from task_service.services import Services
from tests import factories as f
from tests.events.helpers import all_events, wait_until


class FakeSeat:
    """Records the event ids a group sends; declines while `blocked`; renders every event
    except those in `unrenderable` (counting renders per seq)."""

    def __init__(self, key: Hashable = "selection", renders: dict[int, int] | None = None):
        self.key = key
        self.blocked = False
        self.unrenderable: set[int] = set()
        self.renders = renders if renders is not None else {}
        self.sent: list[int] = []

    async def render(self, payload: TaskEvent) -> bytes | None:
        seq = payload.seq or 0
        self.renders[seq] = self.renders.get(seq, 0) + 1
        return None if seq in self.unrenderable else str(seq).encode()

    def send(self, rendered: bytes) -> bool:
        if self.blocked:
            return False
        self.sent.append(int(rendered))
        return True


class Rider:
    """One subscriber from `after` (default: the whole log): follow_events with a seat;
    `received` is its whole stream, ids in the order it got them, each marked with who sent
    it ("group" or "alone")."""

    def __init__(self, services: Services, seat: FakeSeat, *, after: int = 0, where: EventFilter | None = None):
        self.seat = seat
        self.received: list[tuple[int, str]] = []
        self.delivered = 0
        self.on_sent: Callable[[int], None] | None = None
        ride = Ride(services.fan_out, seat, where or EventFilter(), payload=lambda row: row, delivered=self._count)
        self._task = asyncio.create_task(self._run(services, ride, after, ride.where))
        seat.send = self._on_send  # type: ignore[method-assign]

    def _count(self, n: int) -> None:
        self.delivered += n

    def _on_send(self, rendered: bytes) -> bool:
        if not FakeSeat.send(self.seat, rendered):
            return False
        self.received.append((int(rendered), "group"))
        if self.on_sent is not None:
            self.on_sent(int(rendered))
        return True

    async def _run(self, services: Services, ride: Ride, after: int | None, where: EventFilter) -> None:
        async for row in follow_events(services, after=after, where=where, ride=ride):
            self.received.append((row.seq or 0, "alone"))

    @property
    def ids(self) -> list[int]:
        return [seq for seq, _ in self.received]

    def by(self, who: str) -> list[int]:
        return [seq for seq, via in self.received if via == who]

    def cancel(self) -> None:
        self._task.cancel()

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    def failure(self) -> BaseException | None:
        return self._task.exception() if self._task.done() and not self._task.cancelled() else None


@contextlib.asynccontextmanager
async def riders(services: Services, *seats: FakeSeat, **kwargs: Any) -> AsyncIterator[list[Rider]]:
    started = [Rider(services, seat, **kwargs) for seat in seats]
    try:
        yield started
    finally:
        for rider in started:
            await rider.stop()


async def new_task(gql: Any, project_id: str, title: str = "t") -> int:
    """createTask; returns the id (cursor) of its CREATED event."""
    task = await f.task(gql, project_id=project_id, title=title)
    return max(int(e["id"]) for e in await f.events(gql, task_id=task["id"]))


async def until_riding(services: Services, gql: Any, project_id: str, count: int, group: list[Rider]) -> None:
    """Write events until `count` subscribers ride (they join when caught up with an idle group)."""

    async def riding() -> bool:
        return services.fan_out.riders >= count

    for _ in range(50):
        last = await new_task(gql, project_id, "warm-up")
        await wait_until(partial(everyone_has, group, last), what="the warm-up event")
        if await riding():
            return
    raise AssertionError(f"only {services.fan_out.riders} of {count} subscribers ride")


def group_tasks() -> int:
    return sum(task.get_name() == "taskEvents-fan-out" and not task.done() for task in asyncio.all_tasks())


def everyone_has(group: list[Rider], seq: int) -> bool:
    return all(seq in rider.ids or rider.failure() for rider in group)


async def log_ids(gql: Any, **filters: Any) -> list[int]:
    return [int(e["id"]) for e in await all_events(gql, **filters)]


class TestOneGroup:
    async def test_every_rider_gets_every_event_once_in_order_rendered_once(self, gql, services):
        pid = await f.project(gql)
        renders: dict[int, int] = {}
        seats = [FakeSeat(renders=renders) for _ in range(5)]
        async with riders(services, *seats) as group:
            await until_riding(services, gql, pid, 5, group)
            assert len(services.fan_out) == 1
            first_ridden = (await log_ids(gql))[-1] + 1
            for n in range(10):
                await new_task(gql, pid, f"t{n}")
            expected = await log_ids(gql)
            await wait_until(lambda: all(r.ids[-1:] == expected[-1:] for r in group), what="every rider")
        for rider in group:
            assert rider.ids == expected
            assert set(range(first_ridden, expected[-1] + 1)) <= set(rider.by("group"))
        assert all(renders[seq] == 1 for seq in range(first_ridden, expected[-1] + 1))
        assert sum(rider.delivered for rider in group) == sum(len(rider.by("group")) for rider in group)

    async def test_the_group_ends_when_its_last_rider_leaves(self, gql, services):
        pid = await f.project(gql)
        async with riders(services, FakeSeat(), FakeSeat()) as group:
            await until_riding(services, gql, pid, 2, group)
            assert group_tasks() == 1
        await wait_until(lambda: len(services.fan_out) == 0 and group_tasks() == 0, what="no group left running")

    async def test_a_rider_ahead_of_the_group_is_sent_only_events_past_its_cursor(self, gql, services):
        """A subscriber may be caught up further than an idle group (here: it starts after
        a cursor the log has not reached): the group skips what is behind it."""
        pid = await f.project(gql)
        async with riders(services, FakeSeat()) as group:
            await until_riding(services, gql, pid, 1, group)
            now = (await log_ids(gql))[-1]
            async with riders(services, FakeSeat(), after=now + 2) as (ahead,):
                await wait_until(lambda: services.fan_out.riders == 2, what="the rider ahead to join")
                for n in range(3):
                    last = await new_task(gql, pid, f"t{n}")
                await wait_until(partial(everyone_has, [*group, ahead], last), what="the last event")
        assert ahead.received == [(now + 3, "group")]


class TestLettingGo:
    async def test_a_declined_send_leaves_the_rider_alone_without_loss_or_holding_others_up(self, gql, services):
        pid = await f.project(gql)
        slow, other = FakeSeat(), FakeSeat()
        async with riders(services, slow, other) as (slow_rider, other_rider):
            await until_riding(services, gql, pid, 2, [slow_rider, other_rider])
            slow.blocked = True
            blocked_from = await new_task(gql, pid, "while blocked")
            await wait_until(lambda: blocked_from in other_rider.ids, what="the other rider")
            await wait_until(lambda: blocked_from in slow_rider.ids, what="the blocked rider, alone")
            assert (blocked_from, "alone") in slow_rider.received
            assert (blocked_from, "group") in other_rider.received
            slow.blocked = False
            await until_riding(services, gql, pid, 2, [slow_rider, other_rider])
            last = await new_task(gql, pid, "after")
            await wait_until(lambda: last in slow_rider.ids and last in other_rider.ids, what="both")
            expected = await log_ids(gql)
        assert slow_rider.ids == expected
        assert other_rider.ids == expected
        assert (last, "group") in slow_rider.received, "it rides again once its sends go through"

    async def test_an_event_that_does_not_render_is_sent_by_each_riders_own_loop(self, gql, services):
        pid = await f.project(gql)
        seats = [FakeSeat(), FakeSeat(), FakeSeat()]
        async with riders(services, *seats) as group:
            await until_riding(services, gql, pid, 3, group)
            odd = (await log_ids(gql))[-1] + 1
            for seat in seats:
                seat.unrenderable.add(odd)
            assert await new_task(gql, pid, "odd") == odd
            await wait_until(lambda: all(odd in r.ids for r in group), what="the unrenderable event")
            await until_riding(services, gql, pid, 3, group)
            last = await new_task(gql, pid, "after")
            await wait_until(lambda: all(last in r.ids for r in group), what="the last event")
            expected = await log_ids(gql)
        for rider in group:
            assert rider.ids == expected
            assert (odd, "alone") in rider.received
            assert (last, "group") in rider.received

    async def test_a_rider_cancelled_while_the_group_sends_is_sent_nothing_more(self, gql, services):
        """Unsubscribing cancels the subscriber's task; the group may already be sending the
        next event. Each rider cancels the other when it is sent event x: whichever comes
        second in the group's loop must not get x (nor anything after)."""
        pid = await f.project(gql)
        async with riders(services, FakeSeat(), FakeSeat()) as (one, two):
            await until_riding(services, gql, pid, 2, [one, two])
            x = (await log_ids(gql))[-1] + 1

            def cancel(other: Rider) -> Callable[[int], None]:
                return lambda seq: other.cancel() if seq == x else None

            one.on_sent, two.on_sent = cancel(two), cancel(one)
            assert await new_task(gql, pid, "x") == x
            await wait_until(lambda: x in one.ids or x in two.ids, what="event x")
            survivor, cancelled = (one, two) if x in one.ids else (two, one)
            y = await new_task(gql, pid, "after x")
            await wait_until(lambda: y in survivor.ids, what="the rider still there")
        assert survivor.ids[-2:] == [x, y]
        assert [seq for seq in cancelled.ids if seq >= x] == []


class TestGroupsByKey:
    async def test_filters_and_keys_make_separate_groups_each_getting_its_own_events(self, gql, services):
        a, b = await f.project(gql, name="A"), await f.project(gql, name="B")
        seats = {
            "all": FakeSeat("x"),
            "all-other-key": FakeSeat("y"),
            "project-a": FakeSeat("x"),
            "project-b": FakeSeat("x"),
        }
        wheres = {
            "all": EventFilter(),
            "all-other-key": EventFilter(),
            "project-a": EventFilter(project_id=int(a)),
            "project-b": EventFilter(project_id=int(b)),
        }
        started = {name: Rider(services, seat, where=wheres[name]) for name, seat in seats.items()}
        try:
            for _ in range(50):
                last_a, last_b = await new_task(gql, a, "warm-up"), await new_task(gql, b, "warm-up")
                await wait_until(partial(everyone_has, [started["project-a"]], last_a))
                await wait_until(
                    partial(everyone_has, [started[n] for n in ("project-b", "all", "all-other-key")], last_b)
                )
                if services.fan_out.riders == 4:
                    break
            assert len(services.fan_out) == 4
            for n in range(4):
                await new_task(gql, a if n % 2 else b, f"t{n}")
            everything = await log_ids(gql)
            await wait_until(lambda: started["all"].ids[-1:] == everything[-1:], what="the unfiltered rider")
            await wait_until(lambda: started["all-other-key"].ids[-1:] == everything[-1:], what="the other key")
            of_a, of_b = await log_ids(gql, projectId=a), await log_ids(gql, projectId=b)
            await wait_until(lambda: started["project-a"].ids[-1:] == of_a[-1:], what="project A's rider")
            await wait_until(lambda: started["project-b"].ids[-1:] == of_b[-1:], what="project B's rider")
        finally:
            for rider in started.values():
                await rider.stop()
        assert started["all"].ids == everything
        assert started["all-other-key"].ids == everything
        assert started["project-a"].ids == of_a
        assert started["project-b"].ids == of_b
