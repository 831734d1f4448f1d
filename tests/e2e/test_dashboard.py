"""The web dashboard and GraphiQL in headless Chromium (Debian's /usr/bin/chromium driven by
Playwright) against real servers on PostgreSQL.

Every page is watched: a console error, an uncaught exception or a request to any host but
127.0.0.1 fails the test (the pages carry a strict Content-Security-Policy, so a violation
is a console error too). Conditions are awaited with generous deadlines; the times they took
are written to tests/artifacts/dashboard-metrics.json with the screenshots, never asserted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from playwright.async_api import Browser, Page, WebSocketRoute, async_playwright
from playwright.async_api import TimeoutError as PlaywrightTimeout

from tests.e2e.conftest import (
    GraphQLClient,
    Server,
    free_port,
    fresh_pg_database,
    graphql_client,
    running_server,
    start_server,
)

pytestmark = pytest.mark.timeout(300)

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(os.environ.get("TEST_ARTIFACTS_DIR", Path(__file__).resolve().parents[1] / "artifacts"))
DEADLINE = 10.0  # seconds for any awaited condition; the product goal is 2 s
STATUSES = ["PENDING", "ASSIGNED", "RUNNING", "REVIEWING", "COMPLETED", "FAILED", "CANCELLED"]
SKILLS = ["research", "copywrite", "design", "development", "testing", "analysis"]
TAGS = ["frontend", "backend", "docs", "infra", "urgent"]
CARD = "id title status priority tags attempt maxAttempts progress ready assignee { name } feedback summary"
STATS = """{ dashboardStats {
  projects { total active }
  tasks { total pending ready assigned running reviewing completed failed cancelled }
  agents { total online busy offline }
} }"""


# -- browser and pages --------------------------------------------------------------------


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    if not CHROMIUM.exists():  # noqa: ASYNC240 (one stat before the browser starts)
        pytest.fail(
            f"the browser tests need Chromium at {CHROMIUM}: install it with "
            "`apt-get install chromium` (.ci/run installs it when missing)",
            pytrace=False,
        )
    (ARTIFACTS / "dashboard-metrics.json").unlink(missing_ok=True)  # the figures of this run only
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            await launched.close()


@dataclass
class Watch:
    """What a page did: console errors, uncaught exceptions, every URL it requested."""

    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    urls: list[str] = field(default_factory=list)

    def foreign(self) -> list[str]:
        """Requests to anything but 127.0.0.1 (data: URLs never leave the page)."""
        return [url for url in self.urls if urlsplit(url).scheme != "data" and urlsplit(url).hostname != "127.0.0.1"]

    def assert_clean(self, *, allow: tuple[str, ...] = ()) -> None:
        """No request left 127.0.0.1, no exception, no console error except those containing
        one of `allow` (a restart's refused connections, an expected 401)."""
        assert not self.foreign(), f"requests left 127.0.0.1: {self.foreign()}"
        assert not self.page_errors, f"uncaught exceptions: {self.page_errors}"
        errors = [text for text in self.console_errors if not any(part in text for part in allow)]
        assert not errors, f"console errors: {errors}"


@contextlib.asynccontextmanager
async def watched_page(browser: Browser, *, width: int = 1600, height: int = 1000) -> AsyncIterator[tuple[Page, Watch]]:
    """A page in a fresh context (its own localStorage) with everything it does recorded."""
    context = await browser.new_context(viewport={"width": width, "height": height})
    page = await context.new_page()
    watch = Watch()
    page.on("console", lambda message: message.type == "error" and watch.console_errors.append(message.text))
    page.on("pageerror", lambda error: watch.page_errors.append(str(error)))
    page.on("request", lambda request: watch.urls.append(request.url))
    page.on("websocket", lambda socket: watch.urls.append(socket.url))
    try:
        yield page, watch
    finally:
        await context.close()


async def open_dashboard(page: Page, server: Server) -> None:
    await page.goto(f"{server.url}/dashboard/")
    await connection_is(page, "live")


async def connection_is(page: Page, *states: str, within: float = DEADLINE) -> float:
    """Seconds until the header's connection state is one of `states`."""
    return await until(
        page,
        "states => states.includes(document.getElementById('connection').dataset.state)",
        list(states),
        what=f"connection state in {states}",
        within=within,
    )


async def until(page: Page, predicate: str, arg: Any = None, *, what: str, within: float = DEADLINE) -> float:
    """Seconds until the JS `predicate(arg)` holds in the page; fails after `within` seconds."""
    started = time.monotonic()
    try:
        await page.wait_for_function(predicate, arg=arg, timeout=within * 1000)
    except PlaywrightTimeout:
        state = await page.evaluate("document.getElementById('connection')?.dataset.state")
        pytest.fail(f"not within {within} s: {what} (connection: {state})", pytrace=False)
    return time.monotonic() - started


CARD_IN_COLUMN = """([id, status]) => {
  const card = document.querySelector(`#board .card[data-id="${id}"]`);
  return card !== null && card.closest('.column').dataset.status === status;
}"""


def card_title(task_id: str) -> str:
    return f'#board .card[data-id="{task_id}"] .card-title'


async def open_card(page: Page, task_id: str) -> None:
    """Click a card's title. Cards off screen are not rendered (content-visibility: auto),
    so it is scrolled into view first, as a person would."""
    await page.locator(f'#board .card[data-id="{task_id}"]').scroll_into_view_if_needed()
    await page.click(card_title(task_id))


async def card_in(page: Page, task_id: str, status: str, *, within: float = DEADLINE) -> float:
    return await until(page, CARD_IN_COLUMN, [task_id, status], what=f"card {task_id} in {status}", within=within)


async def column_counts(page: Page) -> dict[str, int]:
    return await page.evaluate(
        """() => Object.fromEntries([...document.querySelectorAll('#board .column')].map(
             column => [column.dataset.status, column.querySelectorAll('.card').length]))"""
    )


async def header_counts(page: Page) -> dict[str, str]:
    return await page.evaluate(
        """() => Object.fromEntries([...document.querySelectorAll('[data-count]')]
             .map(el => [el.dataset.count, el.textContent]))"""
    )


def flat_counts(stats: dict[str, Any]) -> dict[str, str]:
    return {
        f"{group}.{key}": str(value)
        for group in ("tasks", "agents", "projects")
        for key, value in stats[group].items()
        if f"{group}.{key}" != "agents.total"
    }


def record(name: str, value: Any) -> None:
    """Keep a measured figure (seconds, counts) in tests/artifacts/dashboard-metrics.json."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / "dashboard-metrics.json"
    figures = json.loads(path.read_text()) if path.exists() else {}
    figures[name] = value
    path.write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")
    print(f"{name}: {value}")


async def screenshot(page: Page, name: str, selector: str | None = None) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240
    path = ARTIFACTS / f"{name}.png"
    if selector:
        await page.locator(selector).screenshot(path=str(path))
    else:
        await page.screenshot(path=str(path))
    return path


# -- API side -----------------------------------------------------------------------------


async def register(gql: GraphQLClient, name: str, skills: list[str]) -> None:
    await gql.execute(
        "mutation($i: RegisterAgentInput!) { registerAgent(input: $i) { agent { name } } }",
        i={"name": name, "role": f"{skills[0]} agent", "skills": skills, "maxConcurrentTasks": 3},
    )


async def create_project(gql: GraphQLClient, name: str) -> str:
    data = await gql.execute("mutation($n: String!) { createProject(input: {name: $n}) { id } }", n=name)
    return data["createProject"]["id"]


async def create_task(gql: GraphQLClient, project_id: str, title: str, **extra: Any) -> dict[str, Any]:
    data = await gql.execute(
        f"mutation($i: CreateTaskInput!) {{ createTask(input: $i) {{ {CARD} }} }}",
        i={"projectId": project_id, "title": title, "taskType": "development", **extra},
    )
    return data["createTask"]


async def step(gql: GraphQLClient, mutation: str, **variables: Any) -> dict[str, Any]:
    data = await gql.execute(mutation, **variables)
    return next(iter(data.values()))


CLAIM = f"mutation($id: ID!, $a: String!) {{ claimTask(id: $id, agent: $a) {{ {CARD} }} }}"
START = f"mutation($id: ID!, $a: String!) {{ startTask(id: $id, agent: $a) {{ {CARD} }} }}"
PROGRESS = f"""mutation($id: ID!, $a: String!, $p: Int!) {{
  reportProgress(id: $id, agent: $a, progress: $p) {{ {CARD} }}
}}"""
SUBMIT = f"""mutation($id: ID!, $a: String!) {{
  submitTask(id: $id, agent: $a, summary: "done", result: {{ok: true}}) {{ {CARD} }}
}}"""
APPROVE = f"""mutation($id: ID!, $r: String!) {{
  reviewTask(id: $id, reviewer: $r, approved: true, feedback: "good") {{ {CARD} }}
}}"""
CANCEL = f"mutation($id: ID!) {{ cancelTask(id: $id) {{ {CARD} }} }}"
FAIL = f"""mutation($id: ID!, $a: String!) {{
  failTask(id: $id, agent: $a, error: "broken", retryable: false) {{ {CARD} }}
}}"""
CLAIM_NEXT = f"mutation($a: String!) {{ claimNextTask(agent: $a) {{ {CARD} }} }}"


async def seed_team(gql: GraphQLClient, *, agents: int, tasks: int) -> dict[str, list[str]]:
    """`agents` agents and `tasks` tasks in two projects, spread over every status: a chain of
    dependencies blocks some, agents hold, run, submit, complete and fail others, some are
    cancelled. Returns the pending task ids."""
    names = [f"agent-{i:02d}" for i in range(agents)]
    for i, name in enumerate(names):
        await register(gql, name, [SKILLS[i % len(SKILLS)]])
    projects = [await create_project(gql, "Platform rewrite"), await create_project(gql, "Spring launch")]
    batch = 250
    for start in range(0, tasks, batch):
        items = []
        for j in range(start, min(start + batch, tasks)):
            item: dict[str, Any] = {
                "ref": f"t{j}",
                "title": f"Task {j}: {['build', 'write', 'check', 'ship'][j % 4]} part {j // 4}",
                "taskType": "development",
                "priority": 1 + j % 10,
                "tags": [TAGS[j % len(TAGS)]],
                "requiredSkills": [SKILLS[j % len(SKILLS)]],
            }
            if j % 10 == 9:
                item["dependsOnRefs"] = [f"t{j - 1}"]
            items.append(item)
        await gql.execute(
            "mutation($p: ID!, $t: [CreateTaskInput!]!) { createTasks(projectId: $p, tasks: $t) { id } }",
            p=projects[(start // batch) % 2],
            t=items,
        )
    held: list[tuple[str, str]] = []
    for name in names[:30]:
        task = await step(gql, CLAIM_NEXT, a=name)
        if task:
            held.append((task["id"], name))
    for task_id, name in held[:20]:
        await step(gql, START, id=task_id, a=name)
    for task_id, name in held[:10]:
        await step(gql, SUBMIT, id=task_id, a=name)
    for task_id, _ in held[:5]:
        await step(gql, APPROVE, id=task_id, r="lead")
    for task_id, name in held[10:13]:
        await step(gql, FAIL, id=task_id, a=name)
    pending = await all_task_ids(gql, "PENDING")
    for task_id in pending[-20:]:
        await step(gql, CANCEL, id=task_id)
    return {"pending": pending[:-20], "projects": projects}


async def all_task_ids(gql: GraphQLClient, status: str) -> list[str]:
    ids: list[str] = []
    after = None
    while True:
        data = await gql.execute(
            "query($s: [TaskStatus!], $a: String) { tasks(filter: {status: $s}, first: 500, after: $a) "
            "{ nodes { id } pageInfo { hasNextPage endCursor } } }",
            s=[status],
            a=after,
        )
        ids += [node["id"] for node in data["tasks"]["nodes"]]
        if not data["tasks"]["pageInfo"]["hasNextPage"]:
            return ids
        after = data["tasks"]["pageInfo"]["endCursor"]


async def api_total(gql: GraphQLClient, task_filter: dict[str, Any]) -> int:
    data = await gql.execute("query($f: TaskFilter) { tasks(filter: $f, first: 0) { totalCount } }", f=task_filter)
    return data["tasks"]["totalCount"]


async def api_stats(gql: GraphQLClient) -> dict[str, Any]:
    return (await gql.execute(STATS))["dashboardStats"]


async def task_of(gql: GraphQLClient, task_id: str) -> dict[str, Any]:
    return (await gql.execute(f"query($id: ID!) {{ task(id: $id) {{ {CARD} }} }}", id=task_id))["task"]


async def counts_match(page: Page, gql: GraphQLClient, *, within: float = DEADLINE) -> dict[str, Any]:
    """Wait until the header and every column agree with the API's dashboardStats (the
    stats stream is throttled, so the page may lag a moment); return those stats."""
    deadline = time.monotonic() + within
    while True:
        stats = await api_stats(gql)
        header, columns = await header_counts(page), await column_counts(page)
        expected_columns = {status: stats["tasks"][status.lower()] for status in STATUSES}
        if header == flat_counts(stats) and columns == expected_columns:
            return stats
        if time.monotonic() > deadline:
            pytest.fail(
                f"the page's counts do not match the API within {within} s:\n"
                f"header {header}\n   api {flat_counts(stats)}\ncolumns {columns}\n    api {expected_columns}",
                pytrace=False,
            )
        await asyncio.sleep(0.2)


# -- the shared server --------------------------------------------------------------------


@dataclass
class Team:
    server: Server
    pending: list[str]
    projects: list[str]


@pytest.fixture(scope="module")
async def team(e2e_pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Team]:
    """One server with 50 agents and 1,000 tasks for the tests that only add to it."""
    async with running_server(e2e_pg_url, tmp_path_factory.mktemp("dashboard")) as server:
        async with graphql_client(server.url) as gql:
            seeded = await seed_team(gql, agents=50, tasks=1000)
        yield Team(server, seeded["pending"], seeded["projects"])


# -- tests --------------------------------------------------------------------------------


class TestDashboardLoads:
    async def test_a_thousand_tasks_render_offline_with_counts_that_match_the_api(
        self, browser: Browser, team: Team
    ) -> None:
        async with (
            watched_page(browser, width=1920, height=1080) as (page, watch),
            graphql_client(team.server.url) as gql,
        ):
            started = time.monotonic()
            await page.goto(f"{team.server.url}/dashboard/")
            await until(page, "() => document.querySelectorAll('#board .card').length >= 1000", what="1,000 cards")
            record("first_render_1000_tasks_seconds", round(time.monotonic() - started, 3))
            record(
                "first_render_mark_ms",
                round(await page.evaluate("performance.getEntriesByName('dashboard:first-render')[0].startTime")),
            )
            await connection_is(page, "live")
            stats = await counts_match(page, gql)
            assert stats["tasks"]["total"] == 1000
            assert all(stats["tasks"][status.lower()] > 0 for status in STATUSES), stats
            blocked = await page.locator("#board .card.is-blocked").count()
            assert blocked == stats["tasks"]["pending"] - stats["tasks"]["ready"] > 0

            # The version in the header is the service's own (GET /).
            version = (await gql.http.get("/", headers={"Accept": "application/json"})).json()["version"]
            assert await page.text_content("#version") == f"v{version}"

            agents = (await gql.execute("{ agents { name status role skills currentTasks { id } } }"))["agents"]
            profiles = await page.evaluate(
                """() => Object.fromEntries([...document.querySelectorAll('#agents .agent')].map(el => [
                     el.dataset.name,
                     [el.querySelector('.role').textContent,
                      [...el.querySelectorAll('.skills .skill')].map(s => s.textContent)]]))"""
            )
            assert profiles["agent-02"] == ["design agent", ["design"]]
            assert profiles == {agent["name"]: [agent["role"] or "", agent["skills"]] for agent in agents}
            shown = await page.evaluate(
                """() => Object.fromEntries([...document.querySelectorAll('#agents .agent')].map(el => [
                     el.dataset.name,
                     [el.dataset.status, [...el.querySelectorAll('[data-task]')].map(t => t.dataset.task).sort()]]))"""
            )
            assert shown == {
                agent["name"]: [agent["status"], sorted(task["id"] for task in agent["currentTasks"])]
                for agent in agents
            }
            assert len(shown) == 50
            held = stats["tasks"]["assigned"] + stats["tasks"]["running"] + stats["tasks"]["reviewing"]
            assert sum(len(tasks) for _, tasks in shown.values()) == held > 0

            projects = (await gql.execute("{ projects { id progress { percentComplete } } }"))["projects"]
            for project in projects:
                value = await page.locator(f'#projects .project[data-id="{project["id"]}"] progress').get_attribute(
                    "value"
                )
                assert float(value or 0) == pytest.approx(project["progress"]["percentComplete"])

            await screenshot(page, "dashboard-board")
            await screenshot(page, "dashboard-agents", ".sidebar")

            # Each filter shows what the API's matching filter counts.
            for control, value, api_filter in [
                ("#filter-project", team.projects[1], {"projectId": team.projects[1]}),
                ("#filter-tag", "urgent", {"tags": ["urgent"]}),
                ("#filter-assignee", "agent-13", {"assignee": "agent-13"}),
            ]:
                await page.select_option(control, value)
                expected = await api_total(gql, api_filter)
                await until(
                    page,
                    "n => document.querySelectorAll('#board .card:not([hidden])').length === n",
                    expected,
                    what=f"{expected} cards shown for {api_filter}",
                )
                await page.select_option(control, "")
            await page.fill("#filter-text", "#1000")
            await until(
                page, "() => document.querySelectorAll('#board .card:not([hidden])').length === 1", what="#1000"
            )
            await page.click("#filter-clear")
            await until(
                page, "() => document.querySelectorAll('#board .card:not([hidden])').length === 1000", what="all"
            )
            watch.assert_clean()

    async def test_the_layout_fits_a_1280_by_800_laptop_screen(self, browser: Browser, team: Team) -> None:
        async with watched_page(browser, width=1280, height=800) as (page, watch):
            await open_dashboard(page, team.server)
            await until(page, "() => document.querySelectorAll('#board .card').length >= 1000", what="1,000 cards")
            await until(page, "() => document.querySelectorAll('#agents .agent').length >= 50", what="50 agents")
            layout = await page.evaluate(
                """() => {
                  const box = el => { const r = el.getBoundingClientRect(); return [r.left, r.right]; };
                  const board = document.getElementById('board');
                  const topbar = document.querySelector('.topbar');
                  const [topLeft, topRight] = box(topbar);
                  return {
                    innerWidth: window.innerWidth,
                    pageScrollWidth: document.documentElement.scrollWidth,
                    bodyScrollWidth: document.body.scrollWidth,
                    board: box(board),
                    boardScroll: [board.scrollWidth, board.clientWidth],
                    columns: [...board.querySelectorAll('.column')].map(c => [c.dataset.status, ...box(c)]),
                    topbar: [topLeft, topRight, topbar.scrollWidth, topbar.clientWidth],
                    outsideTopbar: [...topbar.querySelectorAll('*')]
                      .filter(el => el.getClientRects().length)
                      .filter(el => { const [l, r] = box(el); return l < topLeft - 0.5 || r > topRight + 0.5; })
                      .map(el => el.id || el.className || el.tagName),
                  };
                }"""
            )
            width = layout["innerWidth"]
            assert width == 1280
            assert layout["pageScrollWidth"] <= width, layout
            assert layout["bodyScrollWidth"] <= width, layout
            # Every status column is inside the board's box: none hidden behind a side scroll.
            assert [status for status, *_ in layout["columns"]] == STATUSES
            left, right = layout["board"]
            assert 0 <= left < right <= width, layout
            outside = [c for c in layout["columns"] if c[1] < left - 0.5 or c[2] > right + 0.5]
            assert not outside, f"columns outside the board {layout['board']}: {outside}"
            scroll_width, client_width = layout["boardScroll"]
            assert scroll_width <= client_width, layout
            # The header wraps rather than overflows.
            top_left, top_right, top_scroll, top_client = layout["topbar"]
            assert top_left >= 0, layout
            assert top_right <= width, layout
            assert top_scroll <= top_client, layout
            assert not layout["outsideTopbar"], layout
            await screenshot(page, "dashboard-1280x800")
            watch.assert_clean()

    async def test_a_burst_of_200_changes_patches_the_board(self, browser: Browser, team: Team) -> None:
        async with watched_page(browser) as (page, watch), graphql_client(team.server.url) as gql:
            await open_dashboard(page, team.server)
            cancelled_before = (await column_counts(page))["CANCELLED"]
            targets = team.pending[:200]
            # Mark three elements (an attribute and a JS property, neither of which the page
            # sets): a card the burst leaves alone, a card it moves, an agent's row. Patched in
            # place, they are the very same nodes afterwards; a re-render would make new ones.
            untouched = await page.evaluate(
                """moved => {
                  const untouched = document.querySelector('#board .column[data-status=COMPLETED] .card');
                  const probes = [untouched,
                                  document.querySelector(`#board .card[data-id="${moved}"]`),
                                  document.querySelector('#agents .agent[data-name=agent-00]')];
                  probes.forEach((el, i) => { el.dataset.probe = String(i); el.probeNode = i; });
                  return untouched.dataset.id;
                }""",
                targets[0],
            )
            before = await page.evaluate("({...window.dashboardMetrics})")
            started = time.monotonic()
            queue: asyncio.Queue[str] = asyncio.Queue()
            for task_id in targets:
                queue.put_nowait(task_id)

            async def worker() -> None:
                while not queue.empty():
                    await step(gql, CANCEL, id=queue.get_nowait())

            await asyncio.gather(*(worker() for _ in range(8)))
            api_done = time.monotonic()
            newest = await gql.execute("{ dashboardStats { recentEvents(first: 1) { id } } }")
            last_id = int(newest["dashboardStats"]["recentEvents"][0]["id"])
            received = await until(
                page, "id => window.dashboardMetrics.lastEventId >= id", last_id, what="the last event"
            )
            shown = await until(
                page,
                "([ids, n]) => ids.every(id => document.querySelector(`#board .column[data-status=CANCELLED] "
                ".card[data-id='${id}']`)) && document.querySelectorAll('#board .column[data-status=CANCELLED] "
                ".card').length === n",
                [targets, cancelled_before + 200],
                what="200 cancelled cards",
            )
            after = await page.evaluate("({...window.dashboardMetrics})")
            record(
                "burst_200_changes",
                {
                    "api_seconds": round(api_done - started, 3),
                    "last_event_in_page_after_last_response_seconds": round(received, 3),
                    "board_done_after_last_response_seconds": round(received + shown, 3),
                    "events": after["events"] - before["events"],
                    "frames": after["flushes"] - before["flushes"],
                    "page_apply_ms": round(after["applyMs"] - before["applyMs"], 1),
                },
            )
            # Events are applied in batches, one per animation frame, not one render each.
            events, frames = after["events"] - before["events"], after["flushes"] - before["flushes"]
            assert events >= 200, after
            assert frames < events, f"{frames} frames for {events} events"
            same = await page.evaluate(
                """([untouched, moved]) => [
                    document.querySelector(`#board .card[data-id="${untouched}"]`),
                    document.querySelector(`#board .column[data-status=CANCELLED] .card[data-id="${moved}"]`),
                    document.querySelector('#agents .agent[data-name=agent-00]'),
                  ].map((el, i) => el?.dataset.probe === String(i) && el.probeNode === i)""",
                [untouched, targets[0]],
            )
            assert same == [True, True, True], f"new nodes for (untouched card, moved card, agent row): {same}"
            await counts_match(page, gql)
            watch.assert_clean()


class TestLiveBoard:
    async def test_a_task_driven_through_its_lifecycle_moves_across_the_board(
        self, browser: Browser, team: Team
    ) -> None:
        async with watched_page(browser) as (page, watch), graphql_client(team.server.url) as gql:
            await open_dashboard(page, team.server)
            project = await create_project(gql, "Lifecycle")
            task = await create_task(gql, project, "Walk the board", tags=["walk"])
            times = {"created": await card_in(page, task["id"], "PENDING")}
            await step(gql, CLAIM, id=task["id"], a="agent-40")
            times["claimed"] = await card_in(page, task["id"], "ASSIGNED")
            await until(
                page,
                "id => document.querySelector(`#agents .agent[data-name=agent-40] [data-task='${id}']`)",
                task["id"],
                what="the task under agent-40 in the agents panel",
            )
            await step(gql, START, id=task["id"], a="agent-40")
            times["started"] = await card_in(page, task["id"], "RUNNING")
            await step(gql, PROGRESS, id=task["id"], a="agent-40", p=60)
            times["progress"] = await until(
                page,
                "id => document.querySelector(`#board .card[data-id='${id}'] progress`)?.value === 60",
                task["id"],
                what="progress 60 on the card",
            )
            await step(gql, SUBMIT, id=task["id"], a="agent-40")
            times["submitted"] = await card_in(page, task["id"], "REVIEWING")
            await until(
                page,
                "id => document.querySelector('#feed .event')?.querySelector('[data-task]').dataset.task === id",
                task["id"],
                what="the submission on top of the feed",
            )
            # The feed is paused for the last step: the board moves on, the feed holds it back.
            await page.click("#feed-pause")
            await step(gql, APPROVE, id=task["id"], r="agent-41")
            times["approved"] = await card_in(page, task["id"], "COMPLETED")
            await until(
                page,
                "() => document.getElementById('feed-pause').textContent === 'Resume (1 new)'",
                what="the paused feed counting the held event",
            )
            assert await page.get_attribute("#feed .event", "data-type") == "SUBMITTED"
            await page.click("#feed-pause")
            assert await page.get_attribute("#feed .event", "data-type") == "APPROVED"
            record("lifecycle_step_to_card_seconds", {name: round(value, 3) for name, value in times.items()})
            feed = await page.locator(f'#feed .event:has([data-task="{task["id"]}"])').evaluate_all(
                "items => items.map(item => item.dataset.type)"
            )
            assert feed[:6] == ["APPROVED", "SUBMITTED", "PROGRESS", "STARTED", "CLAIMED", "CREATED"]
            watch.assert_clean()

    async def test_review_and_task_creation_done_in_the_page_reach_the_api(self, browser: Browser, team: Team) -> None:
        async with watched_page(browser) as (page, watch), graphql_client(team.server.url) as gql:
            await open_dashboard(page, team.server)
            await page.click("#new-project")
            await page.fill("#project-name", "Made in the page")
            await page.click("#project-dialog [type=submit]")
            projects = await until_api(
                gql, "{ projects { id name } }", lambda d: any(p["name"] == "Made in the page" for p in d["projects"])
            )
            (project_id,) = [p["id"] for p in projects["projects"] if p["name"] == "Made in the page"]
            prior = await create_task(gql, project_id, "Groundwork")
            await card_in(page, prior["id"], "PENDING")  # the dialog offers the tasks on the board

            await page.click("#new-task")
            await page.select_option("#task-project", project_id)
            await page.fill("#task-title-input", "Written from the dashboard")
            await page.fill("#task-type", "copywrite")
            await page.fill("#task-priority", "9")
            await page.fill("#task-tags", "web, ui")
            await page.fill("#task-skills", "copywrite")
            await page.select_option("#task-depends", [prior["id"]])
            await page.click("#task-dialog [type=submit]")
            created = await until_api(
                gql,
                '{ tasks(filter: {search: "Written from the dashboard"}) { nodes { id priority tags '
                "requiredSkills taskType blockedBy { id } project { id } } } }",
                lambda d: d["tasks"]["nodes"],
            )
            (new,) = created["tasks"]["nodes"]
            assert new["priority"] == 9
            assert new["tags"] == ["web", "ui"]
            assert new["requiredSkills"] == ["copywrite"]
            assert new["taskType"] == "copywrite"
            assert new["project"]["id"] == project_id
            assert new["blockedBy"] == [{"id": prior["id"]}]
            await card_in(page, new["id"], "PENDING")
            await page.click("#drawer-close")

            # Keyboard: "/" jumps to the search, Enter on a card opens it, Escape closes it.
            await page.keyboard.press("/")
            assert await page.evaluate("document.activeElement.id") == "filter-text"
            await page.focus(card_title(new["id"]))
            await page.keyboard.press("Enter")
            await until(
                page,
                "title => document.getElementById('drawer-title').textContent.includes(title)",
                "Written from the dashboard",
                what="the drawer opened from the keyboard",
            )
            await page.keyboard.press("Escape")
            assert await page.evaluate("document.getElementById('drawer').hidden")
            assert await page.evaluate("document.activeElement.classList.contains('card-title')")

            # The project's dependency view puts the new task under the one it waits for.
            await page.click(f'#projects .project[data-id="{project_id}"] [data-action="graph"]')
            await until(
                page,
                """([prior, next]) => document.querySelector(
                     `#graph-body [role=treeitem]:has(> .dep-task [data-task="${prior}"]) [data-task="${next}"]`)""",
                [prior["id"], new["id"]],
                what="the dependency tree",
            )
            await page.keyboard.press("Escape")

            # A review from the drawer: reject with feedback, then approve the second try.
            task = await create_task(gql, project_id, "Needs a review")
            await drive_to_review(gql, task["id"], "agent-42")
            await card_in(page, task["id"], "REVIEWING")
            await open_card(page, task["id"])
            await page.wait_for_selector("#review-feedback")
            await screenshot(page, "dashboard-drawer")
            shown = await page.text_content("#drawer-body") or ""
            assert "Needs a review" in (await page.text_content("#drawer-title") or "")
            assert "null" not in shown
            assert "undefined" not in shown
            await page.fill("#review-feedback", "Add the numbers")
            await page.click('#drawer [data-action="reject"]')
            rejected = await until_api_task(gql, task["id"], lambda t: t["status"] == "PENDING")
            assert rejected["feedback"] == "Add the numbers"
            await card_in(page, task["id"], "PENDING")
            await page.click("#drawer-close")

            await drive_to_review(gql, task["id"], "agent-42")
            await card_in(page, task["id"], "REVIEWING")
            await open_card(page, task["id"])
            # The drawer shows what the API holds: result, summary, the earlier rejection's
            # feedback, and the whole history.
            api = await gql.execute(
                "query($id: ID!) { task(id: $id) { result summary feedback } events(taskId: $id, first: 500) { id } }",
                id=task["id"],
            )
            history = len(api["events"])
            assert api["task"]["result"] == {"ok": True}
            assert api["task"]["summary"] == "done"
            assert api["task"]["feedback"] == "Add the numbers"
            await until(
                page,
                "n => document.querySelectorAll('#drawer-body .history > li').length === n",
                history,
                what=f"{history} events in the drawer's history",
            )
            drawer = await page.evaluate(
                """() => Object.fromEntries([...document.querySelectorAll('#drawer-body section.block')].map(
                     section => [section.querySelector('h3').textContent,
                                 section.querySelector('pre, p')?.textContent ?? null]))"""
            )
            assert json.loads(drawer.get("Result") or "null") == api["task"]["result"], drawer
            assert drawer.get("Summary") == api["task"]["summary"], drawer
            assert drawer.get("Reviewer feedback") == api["task"]["feedback"], drawer
            assert f"History ({history} events)" in drawer, drawer
            await page.click('#drawer [data-action="approve"]')
            await until_api_task(gql, task["id"], lambda t: t["status"] == "COMPLETED")
            await card_in(page, task["id"], "COMPLETED")
            events = await gql.execute("query($id: ID!) { events(taskId: $id) { type actor } }", id=task["id"])
            reviews = [e for e in events["events"] if e["type"] in ("REJECTED", "APPROVED")]
            assert [e["type"] for e in reviews] == ["REJECTED", "APPROVED"]
            assert {e["actor"] for e in reviews} == {"dashboard"}
            watch.assert_clean()

    async def test_cancel_retry_and_release_from_the_drawer_reach_the_api(self, browser: Browser, team: Team) -> None:
        async with watched_page(browser) as (page, watch), graphql_client(team.server.url) as gql:
            await open_dashboard(page, team.server)
            project = await create_project(gql, "Drawer actions")
            task = await create_task(gql, project, "Changes its mind")
            await card_in(page, task["id"], "PENDING")
            await open_card(page, task["id"])
            await page.click('#drawer [data-action="cancel"]')
            await page.click('#drawer [data-action="confirm-cancel"]')
            await until_api_task(gql, task["id"], lambda t: t["status"] == "CANCELLED")
            await card_in(page, task["id"], "CANCELLED")
            await page.click('#drawer [data-action="retry"]')
            await until_api_task(gql, task["id"], lambda t: t["status"] == "PENDING")
            await card_in(page, task["id"], "PENDING")
            await step(gql, CLAIM, id=task["id"], a="agent-44")
            await card_in(page, task["id"], "ASSIGNED")
            await page.click('#drawer [data-action="release"]')
            released = await until_api_task(gql, task["id"], lambda t: t["status"] == "PENDING")
            assert released["assignee"] is None
            await card_in(page, task["id"], "PENDING")
            events = await gql.execute("query($id: ID!) { events(taskId: $id) { type } }", id=task["id"])
            assert [e["type"] for e in events["events"]] == ["CREATED", "CANCELLED", "RETRIED", "CLAIMED", "RELEASED"]
            watch.assert_clean()


class TestPresence:
    async def test_an_agent_that_stops_heartbeating_turns_offline_on_the_page(
        self, browser: Browser, tmp_path: Path
    ) -> None:
        async with (
            fresh_pg_database("ts_dash_presence") as url,
            running_server(url, tmp_path, HEARTBEAT_TIMEOUT_SECONDS="3", REAPER_INTERVAL_SECONDS="0.5") as server,
            graphql_client(server.url) as gql,
            watched_page(browser) as (page, watch),
        ):
            await register(gql, "steady", ["research"])
            await register(gql, "idle", ["design"])
            project = await create_project(gql, "Presence")
            task = await create_task(gql, project, "Held by a fading agent", requiredSkills=["research"])
            alive = {"steady", "idle"}

            async def keep_alive() -> None:
                while True:
                    for name in list(alive):
                        await gql.execute("mutation($a: String!) { heartbeat(agent: $a) { name } }", a=name)
                    await asyncio.sleep(0.5)

            heartbeats = asyncio.create_task(keep_alive())
            try:
                await open_dashboard(page, server)
                await record_agent_statuses(page)
                await record_heartbeat_ages(page, "steady")
                await register(gql, "fading", ["research"])
                await step(gql, CLAIM, id=task["id"], a="fading")
                silent_since = time.monotonic()
                await agent_goes_offline(page, "fading")
                record("offline_shown_after_last_call_seconds", round(time.monotonic() - silent_since, 3))
                seen = await page.evaluate("window.agentStatuses.filter(([name]) => name === 'fading')")
                statuses = [status for _, status in seen]
                assert {"ONLINE", "BUSY"} & set(statuses[:-1]), f"the page never showed fading alive: {statuses}"
                # Its lease expired with it: the task is back in the queue, on the API and the board.
                await until_api_task(gql, task["id"], lambda t: t["status"] == "PENDING")
                await card_in(page, task["id"], "PENDING")
                age = await page.text_content("#agents .agent[data-name=fading] .heartbeat-age")
                assert age is not None
                assert age.endswith("s")
                assert int(age[:-1]) >= 3, age

                # "idle" holds nothing, so no task event mentions it: only agentPresence can
                # tell the page that it went quiet.
                assert await page.get_attribute("#agents .agent[data-name=idle]", "data-status") == "ONLINE"
                alive.discard("idle")
                await agent_goes_offline(page, "idle")
                assert await page.get_attribute("#agents .agent[data-name=steady]", "data-status") == "ONLINE"

                # "steady" only heartbeats, which no event reports: past the timeout the page
                # shows the server's bound instead of a count that keeps growing. Nothing re-reads
                # the agents from here on, so its age as the page counts it passes 3 s.
                await until(
                    page,
                    "() => window.heartbeatAges.some(age => age.startsWith('<') || parseInt(age) > 3)",
                    what="steady's age past the timeout",
                )
                ages = await page.evaluate("window.heartbeatAges")
                counted = [int(age[:-1]) for age in ages if re.fullmatch(r"\d+s", age)]
                assert all(age <= 3 for age in counted), f"steady shown older than the 3 s timeout: {ages}"
                assert "< 3 s" in ages, ages
                assert len(counted) + ages.count("< 3 s") == len(ages), ages
                watch.assert_clean()
            finally:
                heartbeats.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await heartbeats


async def agent_goes_offline(page: Page, name: str) -> None:
    await until(
        page,
        "name => document.querySelector(`#agents .agent[data-name=${name}]`)?.dataset.status === 'OFFLINE'",
        name,
        what=f"{name} OFFLINE on the page",
        within=DEADLINE + 3,
    )


async def newest_event_id(gql: GraphQLClient) -> int:
    data = await gql.execute("{ dashboardStats { recentEvents(first: 1) { id } } }")
    return int(data["dashboardStats"]["recentEvents"][0]["id"])


def record_task_event_subscriptions(page: Page) -> list[str | None]:
    """From now on, the `after` of every taskEvents subscription the page sends over any of
    its WebSockets, in order (graphql-transport-ws `subscribe` frames)."""
    sent: list[str | None] = []

    def on_frame(payload: str | bytes) -> None:
        try:
            message = json.loads(payload)
        except ValueError:
            return
        if not isinstance(message, dict) or message.get("type") != "subscribe":
            return
        if "taskEvents" in message["payload"]["query"]:
            sent.append((message["payload"].get("variables") or {}).get("after"))

    page.on("websocket", lambda socket: socket.on("framesent", on_frame))
    return sent


async def record_connection_states(page: Page) -> None:
    """From now on, window.connectionStates lists every state the header's connection
    indicator takes, in order (each attribute change, even several within one task)."""
    await page.evaluate(
        """() => {
          window.connectionStates = [];
          const el = document.getElementById('connection');
          new MutationObserver(records => records.forEach((record, i) => window.connectionStates.push(
              i + 1 < records.length ? records[i + 1].oldValue : el.dataset.state)))
            .observe(el, { attributes: true, attributeFilter: ['data-state'], attributeOldValue: true });
        }"""
    )


async def agent_gone(page: Page, name: str) -> None:
    """A hard-unregistered agent's row leaves the panel (no event says so: the page re-reads
    the agents when it comes back)."""
    await until(
        page,
        "name => !document.querySelector(`#agents .agent[data-name=${name}]`)",
        name,
        what=f"{name} gone from the agents panel",
    )


async def record_agent_statuses(page: Page) -> None:
    """From now on, window.agentStatuses lists every [agent, status] the panel shows, in order."""
    await page.evaluate(
        """() => {
          window.agentStatuses = [];
          const note = el =>
            el.dataset?.name && window.agentStatuses.push([el.dataset.name, el.dataset.status]);
          new MutationObserver(changes => changes.forEach(change => {
            if (change.type === 'attributes') note(change.target);
            else change.addedNodes.forEach(note);
          })).observe(document.getElementById('agents'),
                      { subtree: true, childList: true, attributes: true, attributeFilter: ['data-status'] });
        }"""
    )


async def record_heartbeat_ages(page: Page, name: str) -> None:
    """From now on, window.heartbeatAges lists every text the agent's "♥" age shows, in order."""
    await page.evaluate(
        """name => {
          const el = document.querySelector(`#agents .agent[data-name=${name}] .heartbeat-age`);
          window.heartbeatAges = [el.textContent];
          new MutationObserver(() => window.heartbeatAges.push(el.textContent))
            .observe(el, { subtree: true, childList: true, characterData: true });
        }""",
        name,
    )


class TestReconnect:
    async def test_after_a_server_restart_the_page_catches_up_with_what_changed_meanwhile(
        self, browser: Browser, tmp_path: Path
    ) -> None:
        async with fresh_pg_database("ts_dash_restart") as url, watched_page(browser) as (page, watch):
            port = free_port()
            first = await start_server(url, tmp_path, port=port)
            try:
                async with graphql_client(first.url) as gql:
                    project = await create_project(gql, "Restarts")
                    kept = await create_task(gql, project, "Survives the restart")
                    doomed = await create_task(gql, project, "Cancelled while away")
                    await register(gql, "leaver", ["design"])
                    newest = await newest_event_id(gql)
                subscriptions = record_task_event_subscriptions(page)
                await open_dashboard(page, first)
                await card_in(page, doomed["id"], "PENDING")
                await until(page, "() => document.querySelector('#agents .agent[data-name=leaver]')", what="leaver")
                await page.evaluate("window.sameDocument = true")
                await record_connection_states(page)
                # Every event so far came with the snapshot, which the subscription starts after.
                assert subscriptions == [str(newest)]
                assert await page.evaluate("window.dashboardMetrics.lastEventId") in (0, newest)
            finally:
                await first.stop()
            await connection_is(page, "reconnecting", "offline")
            sent_before_the_drop = len(subscriptions)

            # Changes the page cannot see: made through another server on another port.
            async with running_server(url, tmp_path) as other, graphql_client(other.url) as gql:
                await step(gql, CANCEL, id=doomed["id"])
                added = await create_task(gql, project, "Created while away")
                await register(gql, "newcomer", ["research"])
                await gql.execute('mutation { unregisterAgent(name: "leaver", hard: true) }')

            second = await start_server(url, tmp_path, port=port)
            try:
                back = await connection_is(page, "live", within=30)
                record("live_again_after_restart_seconds", round(back, 3))
                await card_in(page, doomed["id"], "CANCELLED")
                await card_in(page, added["id"], "PENDING")
                await card_in(page, kept["id"], "PENDING")
                await until(page, "() => document.querySelector('#agents .agent[data-name=newcomer]')", what="newcomer")
                await agent_gone(page, "leaver")
                assert await page.evaluate("window.sameDocument") is True, "the page reloaded"
                states = await page.evaluate("window.connectionStates")
                assert states[0] in ("reconnecting", "offline"), states
                assert "catching-up" in states, states
                assert states[-1] == "live", states
                # It came back from the last event it had seen: each taskEvents subscription
                # sent since the drop (one per attempt that got through) asked for what follows it.
                resent = subscriptions[sent_before_the_drop:]
                assert resent, "no taskEvents subscription after the restart"
                assert set(resent) == {str(newest)}, resent
                feed = await page.locator("#feed .event").evaluate_all(
                    "items => items.map(item => [item.dataset.type, item.querySelector('[data-task]').dataset.task])"
                )
                assert ["CANCELLED", doomed["id"]] in feed
                assert ["CREATED", added["id"]] in feed
                async with graphql_client(second.url) as gql:
                    await counts_match(page, gql)
                # The browser reports the refused connections while the server was down.
                watch.assert_clean(allow=("net::ERR_",))
            finally:
                await second.stop()

    async def test_after_the_network_drops_the_page_catches_up_when_it_returns(
        self, browser: Browser, team: Team
    ) -> None:
        async with watched_page(browser) as (page, watch), graphql_client(team.server.url) as gql:
            subscriptions = record_task_event_subscriptions(page)
            await open_dashboard(page, team.server)
            project = await create_project(gql, "Network drop")
            before = await create_task(gql, project, "Seen before the drop")
            await card_in(page, before["id"], "PENDING")
            await register(gql, "dropout", ["testing"])
            await until(page, "() => document.querySelector('#agents .agent[data-name=dropout]')", what="dropout")
            newest = await newest_event_id(gql)
            await until(page, "id => window.dashboardMetrics.lastEventId === id", newest, what="the newest event")
            await record_connection_states(page)
            sent_before_the_drop = len(subscriptions)
            assert sent_before_the_drop == 1, subscriptions
            assert int(subscriptions[0] or 0) < newest, subscriptions  # the page saw events live
            await page.context.set_offline(True)
            await connection_is(page, "reconnecting", "offline")
            await step(gql, CANCEL, id=before["id"])
            during = await create_task(gql, project, "Created during the drop")
            await gql.execute('mutation { unregisterAgent(name: "dropout", hard: true) }')
            await page.context.set_offline(False)
            back = await connection_is(page, "live")
            record("live_again_after_network_returns_seconds", round(back, 3))
            await card_in(page, before["id"], "CANCELLED")
            await card_in(page, during["id"], "PENDING")
            await agent_gone(page, "dropout")
            await counts_match(page, gql)
            states = await page.evaluate("window.connectionStates")
            assert states[0] in ("reconnecting", "offline"), states
            assert "catching-up" in states, states
            assert states[-1] == "live", states
            resent = subscriptions[sent_before_the_drop:]
            assert resent, "no taskEvents subscription after the network came back"
            assert set(resent) == {str(newest)}, f"resubscribed after {resent}, the page had seen {newest}"
            watch.assert_clean(allow=("net::ERR_",))


ADMIN_KEY = "dashboard-admin-key-0123456789"


class TestApiKey:
    async def test_the_page_asks_for_a_key_says_when_it_is_wrong_and_works_with_the_right_one(
        self, browser: Browser, tmp_path: Path
    ) -> None:
        async with (
            fresh_pg_database("ts_dash_key") as url,
            running_server(url, tmp_path, API_KEY=ADMIN_KEY) as server,
            graphql_client(server.url) as gql,
            watched_page(browser) as (page, watch),
        ):
            gql.http.headers["X-API-Key"] = ADMIN_KEY
            project = await create_project(gql, "Guarded")
            task = await create_task(gql, project, "Behind the key")

            await page.goto(f"{server.url}/dashboard/")
            await page.wait_for_selector("#key-dialog[open]")
            assert "needs" in (await page.text_content("#key-error") or "")
            assert await page.get_attribute("#connection", "data-state") == "offline"

            await page.fill("#key-input", "not-the-key-not-the-key")
            await page.click("#key-submit")
            await until(
                page,
                "() => document.getElementById('key-dialog').open && "
                "document.getElementById('key-error').textContent.includes('not accepted')",
                what="the wrong key's message",
            )
            await page.fill("#key-input", ADMIN_KEY)
            await page.click("#key-submit")
            await connection_is(page, "live")
            await card_in(page, task["id"], "PENDING")
            assert await page.evaluate("localStorage.getItem('task-service.credential')") == ADMIN_KEY

            # Live under the key (the WebSocket sent it in connection_init), and kept for next time.
            later = await create_task(gql, project, "Seen live")
            await card_in(page, later["id"], "PENDING")
            await page.reload()
            await connection_is(page, "live")
            assert not await page.evaluate("document.getElementById('key-dialog').open")

            # An agent token works as well (sent as a bearer token).
            data = await gql.execute(
                'mutation { registerAgent(input: {name: "scout", skills: ["research"]}) { token } }'
            )
            token = data["registerAgent"]["token"]
            assert token.startswith("tsa_")
            await page.evaluate("token => localStorage.setItem('task-service.credential', token)", token)
            await page.reload()
            await connection_is(page, "live")
            await until(page, "() => document.querySelector('#agents .agent[data-name=scout]')", what="scout")

            # GraphiQL takes the stored credential into its headers editor and runs with it.
            await page.goto(f"{server.url}/graphql")
            await page.wait_for_selector(".graphiql-query-editor .CodeMirror")
            headers = await editor_text(page, ".graphiql-editor-tool .graphiql-editor:not(.hidden) .CodeMirror")
            assert json.loads(headers) == {"Authorization": f"Bearer {token}"}
            await set_operation(page, "Agents", "query Agents { agents { name } }")
            await page.click(".graphiql-execute-button")
            assert "scout" in await until_response(page, "scout")

            # A WebSocket refused at connection_init (4403) while HTTP still works: the page
            # stops and asks for a key again. The refusal is played by Playwright, since the
            # server cannot refuse a credential over WebSocket that it accepts over HTTP.
            async def refuse(socket: WebSocketRoute) -> None:
                socket.on_message(
                    lambda message: (
                        asyncio.ensure_future(socket.close(code=4403, reason="Forbidden"))
                        if "connection_init" in str(message)
                        else None
                    )
                )

            await page.route_web_socket(re.compile(r".*/graphql$"), refuse)
            await page.goto(f"{server.url}/dashboard/")
            await until(
                page,
                "() => document.getElementById('key-dialog').open && "
                "document.getElementById('key-error').textContent.includes('not accepted')",
                what="the key prompt after a 4403",
            )
            assert await page.get_attribute("#connection", "data-state") == "offline"
            # The wrong key's 401s are the only console errors.
            watch.assert_clean(allow=("status of 401",))


class TestGraphiQL:
    async def test_graphiql_runs_a_query_and_a_subscription_from_the_services_own_files(
        self, browser: Browser, team: Team
    ) -> None:
        async with watched_page(browser) as (page, watch), graphql_client(team.server.url) as gql:
            await page.goto(f"{team.server.url}/graphql")
            await page.wait_for_selector(".graphiql-query-editor .CodeMirror")
            total = (await api_stats(gql))["tasks"]["total"]
            await set_operation(page, "Totals", "query Totals { dashboardStats { tasks { total } } }")
            await page.click(".graphiql-execute-button")
            answer = await until_response(page, '"total"')
            assert json.loads(answer) == {"data": {"dashboardStats": {"tasks": {"total": total}}}}

            head = (await gql.execute("{ dashboardStats { recentEvents(first: 1) { id } } }"))["dashboardStats"]
            after = head["recentEvents"][0]["id"]
            await set_operation(
                page, "Live", f'subscription Live {{ taskEvents(after: "{after}") {{ id type taskId }} }}'
            )
            await page.click(".graphiql-execute-button")
            project = await create_project(gql, "Seen in GraphiQL")
            task = await create_task(gql, project, "Streams to GraphiQL")
            answer = await until_response(page, f'"taskId": "{task["id"]}"')
            assert json.loads(answer)["data"]["taskEvents"]["type"] == "CREATED"
            await screenshot(page, "graphiql")
            assert any(url.startswith("ws://127.0.0.1") for url in watch.urls), "the subscription used a WebSocket"
            watch.assert_clean()


async def set_operation(page: Page, name: str, text: str) -> None:
    """Put the operation `name` in GraphiQL's query editor, and wait until GraphiQL has
    parsed it (the active tab takes its name): before that, Run would send the old one."""
    await page.evaluate(
        "text => document.querySelector('.graphiql-query-editor .CodeMirror').CodeMirror.setValue(text)", text
    )
    await until(
        page,
        "name => document.querySelector('.graphiql-tab-active')?.textContent.includes(name)",
        name,
        what=f"GraphiQL's tab named {name}",
    )


async def editor_text(page: Page, selector: str) -> str:
    return await page.evaluate("selector => document.querySelector(selector).CodeMirror.getValue()", selector)


async def until_response(page: Page, needle: str) -> str:
    """GraphiQL's response pane once it contains `needle`."""
    try:
        await page.wait_for_function(
            "needle => document.querySelector('.graphiql-response .CodeMirror').CodeMirror.getValue().includes(needle)",
            arg=needle,
            timeout=DEADLINE * 1000,
        )
    except PlaywrightTimeout:
        shown = await editor_text(page, ".graphiql-response .CodeMirror")
        pytest.fail(f"GraphiQL's response never showed {needle} within {DEADLINE} s; it shows:\n{shown}", pytrace=False)
    return await editor_text(page, ".graphiql-response .CodeMirror")


async def drive_to_review(gql: GraphQLClient, task_id: str, agent: str) -> None:
    await step(gql, CLAIM, id=task_id, a=agent)
    await step(gql, START, id=task_id, a=agent)
    await step(gql, SUBMIT, id=task_id, a=agent)


async def until_api(gql: GraphQLClient, query: str, found: Any, *, within: float = DEADLINE) -> dict[str, Any]:
    deadline = time.monotonic() + within
    while True:
        data = await gql.execute(query)
        if found(data):
            return data
        if time.monotonic() > deadline:
            pytest.fail(f"the API never showed it within {within} s: {query} -> {data}", pytrace=False)
        await asyncio.sleep(0.1)


async def until_api_task(gql: GraphQLClient, task_id: str, check: Any, *, within: float = DEADLINE) -> dict[str, Any]:
    deadline = time.monotonic() + within
    while True:
        task = await task_of(gql, task_id)
        if check(task):
            return task
        if time.monotonic() > deadline:
            pytest.fail(f"task {task_id} never reached the state within {within} s: {task}", pytrace=False)
        await asyncio.sleep(0.1)
