"""bench/run_all.py --quick end to end: every benchmark runs beside its baseline on a real
server and PostgreSQL database, and the table has the shape the README describes.

The figures of a --quick run mean nothing (tiny sizes, one-second runs, B3 and B4 beside the
rest); what is checked is that each row is there and measured, and that the run cleans up.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

from tests.conftest import PG_ADMIN_DSN

ROOT = Path(__file__).resolve().parents[2]


def capped_cores_unavailable() -> str:
    """bench/cpu_caps.py's answer, asked in a process of its own (bench/ is not a package
    and is not imported here): "None" when W2 can run on capped cores."""
    done = subprocess.run(
        [sys.executable, "-c", "import cpu_caps; print(cpu_caps.unavailable())"],
        cwd=ROOT / "bench",
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout.strip()


CAPPED = capped_cores_unavailable() == "None"
COLUMNS = [
    "bench",
    "workload",
    "throughput",
    "p50 ms",
    "p99 ms",
    "server CPU %",
    "server RSS MB",
    "load gen CPU %",
    "ratio",
    "target",
    "notes",
]
# bench id -> the rows it must have, by what their workload starts with
EXPECTED = {
    "B1": [
        "claimNextTask",
        "raw asyncpg SKIP LOCKED loop",
        "v1 workflow",
        "taskEvents delivery lag during the claims above",
        "claimNextTask",  # serve --workers 2
    ],
    # then B2 and B7 again with two processes: the service, then the baseline
    "B2": ["heartbeat", "raw Starlette + asyncpg UPDATE", "heartbeat", "raw Starlette + asyncpg UPDATE"],
    "B3": ["taskEvents fan-out"],
    "B4": ["claimNextTask one at a time"],
    "B5": ["dashboardStats"],
    "B6": ["createTasks"],
    "B7": [
        "`{ task(id) { id status } }`",
        "raw Starlette + asyncpg SELECT",
        "`{ task(id) { id status } }`",
        "raw Starlette + asyncpg SELECT",
    ],
    "B8": ["claimNextTask one at a time, 20,000 tasks"],
    "B9": ["RSS soak"],
    # one process on a capped core, then two on two (bench/cpu_caps.py): the service's B7,
    # B2 and B1, then the baselines' B7 and B2
    "W2": [
        *("`{ task(id) { id status } }`", "heartbeat", "claimNextTask") * 2,
        *("raw Starlette + asyncpg SELECT", "raw Starlette + asyncpg UPDATE") * 2,
    ],
}
if not CAPPED:
    EXPECTED["W2"] = ["one core each (cgroup CPU quota)"]

pytestmark = pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (apt-get install wrk)")


def cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


async def bench_databases() -> set[str]:
    conn = await asyncpg.connect(PG_ADMIN_DSN, timeout=10)
    try:
        return {r["datname"] for r in await conn.fetch("SELECT datname FROM pg_database WHERE datname LIKE 'bench_%'")}
    finally:
        await conn.close()


@pytest.mark.timeout(600)
async def test_quick_run_prints_every_benchmark_beside_its_baseline(tmp_path: Path) -> None:
    before = await bench_databases()
    out_json, out_md = tmp_path / "run.json", tmp_path / "RESULTS.md"
    done = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "bench/run_all.py",
            "--quick",
            "--json",
            str(out_json),
            "--output",
            str(out_md),
            "--pg-admin-dsn",
            PG_ADMIN_DSN,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=540,  # a bound on a hang, not a speed check
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    lines = [line for line in done.stdout.splitlines() if line.startswith("|")]
    assert cells(lines[0]) == COLUMNS
    rows = [dict(zip(COLUMNS, cells(line), strict=True)) for line in lines[2:]]
    found: dict[str, list[str]] = {}
    for row in rows:
        found.setdefault(row["bench"], []).append(row["workload"])
    assert sorted(found) == sorted(EXPECTED)
    for bench, workloads in EXPECTED.items():
        assert len(found[bench]) == len(workloads), (bench, found[bench])
        for got, want in zip(found[bench], workloads, strict=True):
            assert got.startswith(want), (bench, got, want)

    by_what = {(r["bench"], r["workload"].split(",")[0]): r for r in rows}
    for bench in ("B1", "B2", "B7"):
        service = next(r for r in rows if r["bench"] == bench)
        baseline = next(r for r in rows if r["bench"] == bench and r["ratio"] == "baseline")
        for row in (service, baseline):
            assert row["throughput"].split()[0].replace(",", "").isdigit(), row
            assert float(row["p50 ms"]) >= 0, row
            assert float(row["load gen CPU %"]) >= 0, row
        # the service's own process is measured; the ratio is a number
        assert float(service["server CPU %"]) > 0, service
        assert float(service["server RSS MB"]) > 0, service
        assert float(service["ratio"]) >= 0, service
        assert not service["notes"].startswith("failed"), service
    assert by_what[("B1", "v1 workflow: list pending")]["ratio"].startswith("service ")
    # the subscriber during B1 got every event the claims wrote, once each, in order
    lag = next(r for r in rows if r["workload"].startswith("taskEvents delivery lag"))
    assert lag["ratio"] == "lost 0, repeated 0", lag
    assert "OUT OF ORDER" not in lag["notes"], lag
    assert int(lag["notes"].split()[0].replace(",", "")) > 0, lag
    assert float(lag["p99 ms"]) >= float(lag["p50 ms"]) >= 0, lag
    # B7, B2 and B1 again with two worker processes, each beside its one-process figure
    for bench in ("B7", "B2", "B1"):
        (two,) = [r for r in rows if r["bench"] == bench and r["workload"].endswith("serve --workers 2")]
        assert two["ratio"].endswith("x 1 process"), two
        assert float(two["ratio"].split("x")[0]) > 0, two
        assert float(two["server CPU %"]) > 0, two
        # each worker's share of the load (how wrk's connections fell on the two is the
        # kernel's and uvicorn's doing: one may have none), and how busy the machine was
        shares = two["notes"].split("processes ")[1].split(";")[0].split(" + ")
        assert len(shares) == 2, two
        assert sum(float(share.rstrip(" %")) for share in shares) > 0, two
        assert "machine busy" in two["notes"], two
    for bench in ("B7", "B2"):
        (two,) = [r for r in rows if r["bench"] == bench and r["workload"].endswith("uvicorn --workers 2")]
        assert two["ratio"].endswith("x 1 process"), two
        assert float(two["ratio"].split("x")[0]) > 0, two
    # on capped cores: each two-process row beside its one-process figure, every process held
    # to its quota (throttled in each run)
    if CAPPED:
        capped = [r for r in rows if r["bench"] == "W2"]
        for row in capped:
            assert float(row["throughput"].split()[0].replace(",", "")) > 0, row
            throttled = row["notes"].split("throttled ")[1].split(" periods")[0]
            assert all(int(n) > 0 for n in throttled.split(" / ")), row
        two = [r["ratio"].endswith("x 1 process") and float(r["ratio"].split("x")[0]) > 0 for r in capped]
        assert [r["ratio"] == "reference" for r in capped] == [not t for t in two], capped
        assert two == [False] * 3 + [True] * 3 + [False] * 2 + [True] * 2, capped
    # claim latency on the database grown (to 20,000 tasks in a quick run) beside the smaller one
    (b8,) = [r for r in rows if r["bench"] == "B8"]
    assert float(b8["ratio"].split("x")[0]) > 0, b8
    assert float(b8["p99 ms"]) >= float(b8["p50 ms"]) > 0, b8
    # the soak ran whole task cycles without a failed operation and sampled the server's RSS
    (soak,) = [r for r in rows if r["bench"] == "B9"]
    assert soak["notes"] in ("PASS", "FAIL"), soak
    assert soak["ratio"].startswith("RSS "), soak
    assert float(soak["server RSS MB"]) > 0, soak
    soak_report = next(r for r in json.loads(out_json.read_text())["rows"] if r["bench"] == "B9")["extra"]
    assert soak_report["soak"]["operations"]["submit"] > 0, soak_report
    assert soak_report["soak"]["events_received"] > 0, soak_report
    assert soak_report["rss"]["samples"] > 5, soak_report
    for bench in ("B3", "B4"):
        row = next(r for r in rows if r["bench"] == bench)
        assert not row["notes"].startswith("failed"), row
        assert row["p99 ms"] != "-", row
    assert next(r for r in rows if r["bench"] == "B3")["ratio"].startswith("lost ")

    report = json.loads(out_json.read_text())
    assert report["quick"] is True
    assert len(report["rows"]) == len(rows)
    assert not report["info"].get("server_log_problems"), report["info"].get("server_log_tail")
    text = out_md.read_text()
    machine = report["info"]["machine"]
    assert f"Machine: {machine['cores']} cores" in text
    assert "PostgreSQL" in text
    assert cells(next(line for line in text.splitlines() if line.startswith("|"))) == COLUMNS
    # every database the run created is gone again
    assert await bench_databases() <= before
