"""What taskctl prints: JSON by default (the contract's camelCase names), tables with --human."""

from __future__ import annotations

import dataclasses
import json
import sys
from typing import Any, TextIO

from ..models import Agent, DashboardStats, Project, Registration, Task, TaskEvent, to_json

TASK_COLUMNS = [
    ("id", "id"),
    ("status", "status"),
    ("pri", "priority"),
    ("type", "taskType"),
    ("try", "attempt"),
    ("assignee", "assignee"),
    ("ready", "ready"),
    ("title", "title"),
]
PROJECT_COLUMNS = [("id", "id"), ("status", "status"), ("done %", "percent"), ("tasks", "total"), ("name", "name")]
EVENT_COLUMNS = [
    ("id", "id"),
    ("time", "createdAt"),
    ("task", "taskId"),
    ("type", "type"),
    ("from", "fromStatus"),
    ("to", "toStatus"),
    ("actor", "actor"),
    ("message", "message"),
]


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.1f}"
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def table(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> str:
    cells = [[_cell(row.get(key)) for _, key in columns] for row in rows]
    widths = [max([len(title)] + [len(r[n]) for r in cells]) for n, (title, _) in enumerate(columns)]
    lines = ["  ".join(title.upper().ljust(w) for (title, _), w in zip(columns, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join(lines)


def _fields(data: dict[str, Any]) -> str:
    width = max(len(k) for k in data) if data else 0
    return "\n".join(
        f"{k.ljust(width)}  {_cell(v) if not isinstance(v, str) else v}"
        for k, v in data.items()
        if v not in (None, [], {})
    )


def _project_row(project: Project) -> dict[str, Any]:
    row = to_json(project)
    if project.progress is not None:
        row.update(percent=project.progress.percent_complete, total=project.progress.total)
    return row


def human(value: Any) -> str:
    """A person's view of a result."""
    if isinstance(value, list) and value and isinstance(value[0], Task):
        return table(to_json(value), TASK_COLUMNS)
    if isinstance(value, list) and value and isinstance(value[0], Project):
        return table([_project_row(p) for p in value], PROJECT_COLUMNS)
    if isinstance(value, list) and value and isinstance(value[0], TaskEvent):
        return table(to_json(value), EVENT_COLUMNS)
    if isinstance(value, list) and not value:
        return "(none)"
    if isinstance(value, TaskEvent):
        return table([to_json(value)], EVENT_COLUMNS).splitlines()[1]
    if isinstance(value, Registration):
        text = _fields({k: v for k, v in to_json(value.agent).items() if k != "stats"})
        return text + (f"\ntoken  {value.token}\n(shown once: export TASK_SERVICE_TOKEN=...)" if value.token else "")
    if isinstance(value, Agent | Task):
        return _fields({k: v for k, v in to_json(value).items() if k != "stats"})
    if isinstance(value, Project):
        data = to_json(value)
        progress = data.pop("progress") or {}
        return _fields(data) + ("\n\n" + _fields(progress) if progress else "")
    if isinstance(value, DashboardStats):
        parts = [
            f"{name}: " + ", ".join(f"{k} {v}" for k, v in getattr(value, name).items())
            for name in ("projects", "tasks", "agents", "deleted")
        ]
        return "\n".join(parts)
    if isinstance(value, dict):
        return "\n\n".join(
            f"{k}:\n{human(v)}" if isinstance(v, list | dict) or dataclasses.is_dataclass(v) else f"{k}: {_cell(v)}"
            for k, v in value.items()
        )
    if value is None:
        return "(nothing)"
    return _cell(value)


def emit(value: Any, *, human_output: bool, out: TextIO | None = None, lines: bool = False) -> None:
    """Print a result: JSON (one line each with `lines`, else indented) or the human view."""
    out = out or sys.stdout
    if human_output:
        out.write(human(value) + "\n")
    elif lines:
        out.write(json.dumps(to_json(value), separators=(",", ":")) + "\n")
    else:
        out.write(json.dumps(to_json(value), indent=2) + "\n")
    out.flush()
