"""Where the client remembers each claimed task's `attempt`, the fencing token it sends with
start, progress, submit, release and fail.

`MemoryAttempts` lives as long as the client (the SDK's default). `FileAttempts` keeps them in
a JSON file so separate `taskctl` processes (`taskctl next`, then `taskctl start 7`) share
them; writes are atomic and serialised by an advisory lock on the file.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol


class AttemptStore(Protocol):
    def get(self, task_id: str) -> int | None: ...

    def keep(self, task_id: str, attempt: int) -> None: ...

    def forget(self, task_id: str) -> None: ...

    def task_ids(self) -> set[str]: ...


class MemoryAttempts:
    def __init__(self) -> None:
        self._attempts: dict[str, int] = {}

    def get(self, task_id: str) -> int | None:
        return self._attempts.get(task_id)

    def keep(self, task_id: str, attempt: int) -> None:
        self._attempts[task_id] = attempt

    def forget(self, task_id: str) -> None:
        self._attempts.pop(task_id, None)

    def task_ids(self) -> set[str]:
        return set(self._attempts)


def default_state_path(url: str, agent: str | None) -> Path:
    """$XDG_STATE_HOME/taskctl/<server and agent>.json (one file per server and agent)."""
    base = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "taskctl"
    safe = "".join(c if c.isalnum() or c in "-._" else "_" for c in f"{url}-{agent or 'token'}")
    return base / f"{safe}.json"


class FileAttempts:
    """Attempts in a JSON file shared by processes; an unreadable file counts as empty."""

    def __init__(self, path: Path):
        self.path = path

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, int]]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield self._read()
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _read(self) -> dict[str, int]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return {str(k): int(v) for k, v in data.items()} if isinstance(data, dict) else {}

    def _write(self, data: dict[str, int]) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".attempts-")
        with os.fdopen(fd, "w") as out:
            json.dump(data, out)
        os.replace(tmp, self.path)

    def get(self, task_id: str) -> int | None:
        return self._read().get(task_id)

    def keep(self, task_id: str, attempt: int) -> None:
        with self._locked() as data:
            data[task_id] = attempt
            self._write(data)

    def forget(self, task_id: str) -> None:
        with self._locked() as data:
            if data.pop(task_id, None) is not None:
                self._write(data)

    def task_ids(self) -> set[str]:
        return set(self._read())
