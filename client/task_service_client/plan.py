"""Project plans for `taskctl breakdown`: a JSON or YAML file listing tasks with local refs.

    project: {name: Launch, description: Ship the launch page}   # or `project_id: "3"`
    defaults: {taskType: copywrite, requiresReview: false}        # optional, merged into each task
    tasks:
      - ref: brief
        title: Write the brief
        type: copywrite            # = taskType
        skills: [copywrite]        # = requiredSkills
      - title: Publish the brief
        type: publish
        depends_on: [brief]        # refs of tasks in this plan (= dependsOnRefs)

Task keys are CreateTaskInput's, in camelCase or snake_case, plus the short aliases above.
The whole plan becomes one createTasks call: all tasks are created, or none.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .errors import BadUserInputError

TASK_KEYS = {
    "ref",
    "title",
    "description",
    "taskType",
    "priority",
    "tags",
    "requiredSkills",
    "assignee",
    "reviewer",
    "acceptanceCriteria",
    "requiresReview",
    "parentId",
    "dependsOn",
    "dependsOnRefs",
    "maxAttempts",
    "estimatedHours",
    "timeoutMinutes",
    "availableAt",
    "dueAt",
    "createdBy",
    "idempotencyKey",
}
ALIASES = {"type": "taskType", "skills": "requiredSkills", "depends_on": "dependsOnRefs", "after": "dependsOnRefs"}


@dataclass(frozen=True)
class Plan:
    project_id: str | None
    project: dict[str, Any] | None
    tasks: list[dict[str, Any]]


def _camel(key: str) -> str:
    head, *rest = key.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _task(item: Any, defaults: dict[str, Any], where: str) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise BadUserInputError(f"{where} must be a mapping of task fields")
    task: dict[str, Any] = {}
    for raw_key, value in {**defaults, **item}.items():
        key = ALIASES.get(str(raw_key), _camel(str(raw_key)))
        if key not in TASK_KEYS:
            raise BadUserInputError(f"{where}: unknown key {raw_key!r}; allowed: {', '.join(sorted(TASK_KEYS))}")
        task[key] = (
            [str(v) for v in value] if key in {"dependsOn", "dependsOnRefs"} and isinstance(value, list) else value
        )
    for required in ("title", "taskType"):
        if not task.get(required):
            raise BadUserInputError(f"{where}: {required} is required")
    return task


def parse_plan(text: str, *, source: str = "plan") -> Plan:
    """A plan from JSON or YAML text (JSON is YAML). Raises BadUserInputError on a malformed plan."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise BadUserInputError(f"{source} is neither JSON nor YAML: {exc}") from None
    if isinstance(data, list):
        data = {"tasks": data}
    if not isinstance(data, dict) or not isinstance(data.get("tasks"), list) or not data["tasks"]:
        raise BadUserInputError(f"{source} must have a non-empty `tasks` list")
    defaults = data.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise BadUserInputError(f"{source}: `defaults` must be a mapping")
    project = data.get("project")
    if project is not None and (not isinstance(project, dict) or not project.get("name")):
        raise BadUserInputError(f"{source}: `project` must be a mapping with a name")
    project_id = data.get("project_id", data.get("projectId"))
    tasks = [_task(item, defaults, f"{source}: tasks[{n}]") for n, item in enumerate(data["tasks"])]
    return Plan(project_id=str(project_id) if project_id is not None else None, project=project, tasks=tasks)


def load_plan(path: str) -> Plan:
    """A plan from a file (`-` reads standard input)."""
    if path == "-":
        return parse_plan(sys.stdin.read(), source="stdin")
    try:
        return parse_plan(Path(path).read_text(), source=path)
    except OSError as exc:
        raise BadUserInputError(f"cannot read {path}: {exc.strerror}") from None
