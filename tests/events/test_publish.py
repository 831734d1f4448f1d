"""Commit to publish (events/publish.py): each mutation's transaction hands the publisher a
typed record of its effects, after commit, and nothing when it rolls back."""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any

import pytest
from sqlalchemy import func, select

from task_service import services as services_module
from task_service.db.effects import Effects
from task_service.db.enums import TaskEventType
from task_service.db.events import SEQUENCER_LOCK_KEY, record_event
from task_service.db.models import Task
from task_service.events.bus import EventBus
from task_service.events.publish import PostgresPublisher, SqlitePublisher
from task_service.services import Services
from tests import factories as f
from tests.events.helpers import DEADLINE, another_process, wait_until

Summary = tuple[list[str], list[tuple[str, str | None, str]]]


@pytest.fixture
def published(services: Services, monkeypatch: pytest.MonkeyPatch) -> list[Effects]:
    """The Effects of every transaction the publisher is told has committed, in order."""
    seen: list[Effects] = []
    announce = services.publisher.after_commit

    async def after_commit(effects: Effects) -> None:
        seen.append(effects)
        await announce(effects)

    monkeypatch.setattr(services.publisher, "after_commit", after_commit)
    return seen


def summary(effects: Effects) -> Summary:
    return (
        [event.type for event in effects.events],
        [(change.name, change.previous, change.status) for change in effects.presence],
    )


async def effects_of(published: list[Effects], run: Any) -> list[Summary]:
    """The summaries of the transactions `run` commits."""
    published.clear()
    await run
    return [summary(effects) for effects in published]


@pytest.fixture
async def claimed(gql: Any) -> str:
    pid = await f.project(gql)
    await f.agent(gql, name="a")
    task = await f.task(gql, project_id=pid)
    await f.claim(gql, task_id=task["id"], agent="a")
    return task["id"]


class TestEffectsOfMutations:
    async def test_create_project_has_no_effects(self, gql, published):
        assert await effects_of(published, f.project(gql)) == [([], [])]

    async def test_register_agent_is_a_presence_change_from_nothing(self, gql, published):
        assert await effects_of(published, f.agent(gql, name="a")) == [([], [("a", None, "ONLINE")])]

    async def test_create_tasks_writes_one_event_per_task(self, gql, published):
        pid = await f.project(gql)
        items = [{"title": f"t{i}", "taskType": "research"} for i in range(3)]
        create = gql.execute(
            "mutation($p: ID!, $t: [CreateTaskInput!]!) { createTasks(projectId: $p, tasks: $t) { id } }",
            p=pid,
            t=items,
        )
        assert await effects_of(published, create) == [(["CREATED", "CREATED", "CREATED"], [])]

    async def test_claim_writes_its_event_and_makes_the_agent_busy(self, gql, published):
        pid = await f.project(gql)
        await f.agent(gql, name="a")
        task = await f.task(gql, project_id=pid)
        claim = f.claim(gql, task_id=task["id"], agent="a")
        assert await effects_of(published, claim) == [(["CLAIMED"], [("a", "ONLINE", "BUSY")])]

    async def test_a_heartbeat_that_changes_no_status_has_no_effects(self, gql, claimed, published):
        heartbeat = gql.execute('mutation { heartbeat(agent: "a") { name } }')
        assert await effects_of(published, heartbeat) == [([], [])]

    async def test_submit_for_review_frees_the_agent(self, gql, claimed, published):
        submit = f.transition(gql, "submitTask", id=claimed, agent="a", summary="done")
        assert await effects_of(published, submit) == [(["SUBMITTED"], [("a", "BUSY", "ONLINE")])]

    async def test_unregister_releases_the_task_and_takes_the_agent_offline(self, gql, claimed, published):
        unregister = gql.execute('mutation { unregisterAgent(name: "a") }')
        assert await effects_of(published, unregister) == [(["RELEASED"], [("a", "BUSY", "OFFLINE")])]

    async def test_a_refused_mutation_publishes_nothing(self, gql, claimed, published):
        published.clear()
        failure = await gql.error('mutation($id: ID!) { startTask(id: $id, agent: "nobody") { id } }', id=claimed)
        assert failure.code == "NOT_FOUND"
        assert published == []

    async def test_a_failure_after_writing_publishes_nothing(self, services, claimed, published):
        """Effects noted before an error are dropped with the rollback."""
        noted: list[int] = []

        async def write_then_fail() -> None:
            async with services.transaction() as session:
                task = await session.get(Task, int(claimed))
                assert task is not None
                record_event(session, task, TaskEventType.UPDATED, actor="test")
                noted.append(len(session.effects.events))
                raise RuntimeError("after the write")

        published.clear()
        with pytest.raises(RuntimeError, match="after the write"):
            await write_then_fail()
        assert noted == [1]
        assert published == []


class TestPublisherPerDatabase:
    async def test_the_publisher_matches_the_database(self, services, backend):
        expected = SqlitePublisher if backend == "sqlite" else PostgresPublisher
        assert type(services.publisher) is expected

    async def test_events_are_stamped_by_the_time_the_mutation_returns(self, gql, services, published):
        pid = await f.project(gql)
        task = await f.task(gql, project_id=pid)
        (effects,) = published[-1:]
        events = await f.events(gql, task_id=task["id"])
        assert [e["type"] for e in events] == ["CREATED"]
        if services.is_sqlite:
            # SQLite: the transaction stamped its own event before commit.
            assert effects.horizon == int(events[-1]["id"])
        else:
            assert effects.horizon is None  # the sequencer stamped it, after commit


@pytest.mark.postgres_only
class TestSequencerSync:
    async def test_a_sync_that_times_out_logs_a_warning(self, services, caplog):
        # Another transaction holds the sequencer's lock, so the pass sync waits for cannot end.
        async with services.sessionmaker() as blocker, blocker.begin():
            await blocker.execute(select(func.pg_advisory_xact_lock(SEQUENCER_LOCK_KEY)))
            with caplog.at_level(logging.WARNING, logger="task_service.events.sequencer"):
                finished = await services.sequencer.sync(timeout=0.2)
        assert finished is False
        warnings = [r for r in caplog.records if r.name == "task_service.events.sequencer"]
        assert [r.levelno for r in warnings] == [logging.WARNING]
        assert "no pass finished within 0.2s of a commit" in warnings[0].getMessage()

    async def test_a_sync_in_time_logs_nothing(self, services, caplog):
        with caplog.at_level(logging.WARNING, logger="task_service.events.sequencer"):
            finished = await services.sequencer.sync()
        assert finished is True
        assert [r for r in caplog.records if r.name == "task_service.events.sequencer"] == []


@pytest.mark.postgres_only
class TestAnnouncements:
    """How a pass's horizon reaches the other processes: with the bus on the service's own
    database (the default), the pass's own round trip sends it (db/driver.py); a bus
    elsewhere is sent the message; a horizon the bus already carried is not sent again."""

    async def test_a_pass_announces_through_the_database_not_through_the_bus(self, gql, services, monkeypatch):
        sent = spy_on_bus(services.bus, monkeypatch)
        async with another_process(services.settings.database_url) as other:
            heard = hear_on_bus(other.bus, monkeypatch)
            pid = await f.project(gql)
            await f.task(gql, project_id=pid)
            horizon = services.sequencer.horizon
            assert horizon >= 1
            # Heard as a message: the other process's own sequencer would raise its bus's
            # horizon too, without any message.
            await wait_until(
                lambda: any(m.get("k") == "seq" and m["n"] >= horizon for m in heard),
                DEADLINE,
                "the other process to hear the horizon on the bus",
            )
        assert [m for m in sent if m.get("k") == "seq"] == []
        assert services.bus.announced >= horizon

    async def test_a_pass_whose_notify_fails_still_stamps_and_the_bus_announces(
        self, gql, services, monkeypatch, caplog
    ):
        """A NOTIFY that fails (its queue full) rolls the pass back with it: the pass is
        made again without it, and the bus sends the announcement."""
        monkeypatch.setattr(services_module, "CHANNEL", "")  # pg_notify refuses an empty channel
        sent = spy_on_bus(services.bus, monkeypatch)
        pid = await f.project(gql)
        with caplog.at_level(logging.WARNING, logger="task_service.services"):
            task = await f.task(gql, project_id=pid)
        assert [e["type"] for e in await f.events(gql, task_id=task["id"])] == ["CREATED"]
        horizon = services.sequencer.horizon
        assert {"k": "seq", "n": horizon} in sent
        assert any("announcing in the pass failed" in r.getMessage() for r in caplog.records)

    async def test_the_bus_is_in_the_database_only_when_it_is_the_same_database(self, services):
        database = services.settings.database_url.partition("://")[2]
        assert services._bus_in_database()  # BROADCAST_URL unset: the bus is made from DATABASE_URL
        assert dataclasses.replace(services, bus=EventBus(f"postgresql://{database}"))._bus_in_database()
        host, _, name = database.rpartition("/")
        others = (
            "memory://",
            "redis://127.0.0.1:6379/0",
            f"postgres://{host}/another",
            f"postgres://{host.rsplit(':', 1)[0]}:5433/{name}",
            f"postgres://{host.rsplit('@', 1)[-1]}/{name}",  # no user: perhaps another database
        )
        for other in others:
            assert not dataclasses.replace(services, bus=EventBus(other))._bus_in_database(), other

    async def test_a_horizon_the_bus_already_carried_is_not_published_again(self, monkeypatch):
        bus = EventBus("memory://")
        await bus.start()
        try:
            sent = spy_on_bus(bus, monkeypatch)
            with bus.listen() as listener:
                await bus.publish_horizon(5)
                await bus.publish_horizon(5)
                bus._dispatch(json.dumps({"k": "seq", "n": 9}))  # another process's announcement
                await bus.publish_horizon(8)
                await bus.publish_horizon(11)
                assert listener.horizon == 11  # local listeners are told every horizon
            assert [m for m in sent if m.get("k") == "seq"] == [{"k": "seq", "n": 5}, {"k": "seq", "n": 11}]
        finally:
            await bus.stop()


def hear_on_bus(bus: EventBus, monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Every message `bus` hears on its channel, in order."""
    heard: list[dict[str, Any]] = []
    dispatch = bus._dispatch

    def recording(raw: str) -> None:
        heard.append(json.loads(raw))
        dispatch(raw)

    monkeypatch.setattr(bus, "_dispatch", recording)
    return heard


def spy_on_bus(bus: EventBus, monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Every message `bus` publishes itself, in order."""
    sent: list[dict[str, Any]] = []
    publish = bus._publish

    async def recording(message: dict[str, Any]) -> None:
        sent.append(message)
        await publish(message)

    monkeypatch.setattr(bus, "_publish", recording)
    return sent
