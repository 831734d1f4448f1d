"""Cores of a set size, for W2's scaling rows.

On a 2-core machine the service's processes share the cores with PostgreSQL and the load
generator, so `serve --workers 2` cannot show what a second core gives the service: with one
process the machine is already 70-80 % busy. Here each server process is put in a cgroup of
its own whose CPU quota (CFS bandwidth: `share` of every 10 ms period) makes it a core of its
own, slower than the machine's. One process on one such core is then compared with two
processes on two, while PostgreSQL and wrk keep the rest of the machine. The cgroup's
`nr_throttled` count says whether the quota was what limited the process.

cgroup v1 (`/sys/fs/cgroup/cpu`) and v2 (`cpu.max`) are both handled; it needs the right to
make cgroups (root in the sandbox). `unavailable()` says why not, and W2 then leaves these
rows out.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from pathlib import Path

from b3_fanout import cpu_seconds, process_tree

CGROUP_V1 = Path("/sys/fs/cgroup/cpu")
CGROUP_V2 = Path("/sys/fs/cgroup")
PERIOD_US = 10_000


def _v2() -> bool:
    controllers = CGROUP_V2 / "cgroup.controllers"
    return controllers.exists() and "cpu" in controllers.read_text().split()


def unavailable() -> str | None:
    """None if cgroups with a CPU quota can be made here, else why not."""
    if (CGROUP_V1 / "cpu.cfs_quota_us").exists():
        root = CGROUP_V1
    elif _v2():
        root = CGROUP_V2
    else:
        return "no cgroup CPU controller is mounted"
    if not os.access(root, os.W_OK):
        return f"{root} is not writable"
    return None


def worker_processes(root: int) -> list[int]:
    """The processes that serve requests: `root` itself, or the worker processes that
    uvicorn's `--workers` spawns (not multiprocessing's resource tracker)."""
    workers = []
    for pid in process_tree(root)[1:]:
        with contextlib.suppress(OSError):
            if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes():
                workers.append(pid)
    return workers or [root]


class CpuCaps:
    """Each process given to `cap` in a cgroup of its own with a quota of `share` of a core;
    `release` puts them back and removes the cgroups."""

    def __init__(self, share: float, tag: str):
        if not 0 < share <= 1:
            raise ValueError("a core's share is in (0, 1]")
        self.share = share
        self.tag = tag
        self.v2 = not (CGROUP_V1 / "cpu.cfs_quota_us").exists()
        self.root = CGROUP_V2 if self.v2 else CGROUP_V1
        self.groups: list[Path] = []

    def cap(self, pids: list[int]) -> None:
        quota = round(self.share * PERIOD_US)
        if self.v2:
            (self.root / "cgroup.subtree_control").write_text("+cpu")
        for i, pid in enumerate(pids):
            group = self.root / f"ts-bench-{os.getpid()}-{self.tag}-{i}"
            group.mkdir(exist_ok=True)
            self.groups.append(group)
            if self.v2:
                (group / "cpu.max").write_text(f"{quota} {PERIOD_US}")
            else:
                (group / "cpu.cfs_period_us").write_text(str(PERIOD_US))
                (group / "cpu.cfs_quota_us").write_text(str(quota))
            (group / "cgroup.procs").write_text(str(pid))

    def throttled(self) -> list[int]:
        """Each cgroup's count of periods in which its quota ran out, so far."""
        counts = []
        for group in self.groups:
            stat = dict(line.split() for line in (group / "cpu.stat").read_text().splitlines() if line.strip())
            counts.append(int(stat.get("nr_throttled", 0)))
        return counts

    def release(self) -> None:
        for group in self.groups:
            with contextlib.suppress(OSError):
                for pid in (group / "cgroup.procs").read_text().split():
                    with contextlib.suppress(OSError):
                        (self.root / "cgroup.procs").write_text(pid)
            with contextlib.suppress(OSError):
                group.rmdir()
        self.groups.clear()


async def settle(pids: list[int], *, busy_pct: float = 3.0, timeout: float = 60.0) -> float:
    """Wait until none of `pids` used more than `busy_pct` % of a core over a second (a
    capped process that has just started may be warming up for several seconds); the
    seconds waited."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        before = [sum(cpu_seconds(pid)) for pid in pids]
        await asyncio.sleep(1.0)
        after = [sum(cpu_seconds(pid)) for pid in pids]
        if all(100 * (b - a) <= busy_pct for a, b in zip(before, after, strict=True)):
            break
    return time.monotonic() - t0
