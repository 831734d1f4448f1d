"""README's configuration table is the reference of every setting: each field of Settings is
in it, and it names no variable the service does not read."""

from __future__ import annotations

import re

from task_service.settings import Settings
from tests.ops.helpers import REPO


def documented_variables() -> set[str]:
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("\n## Configuration\n") :]
    section = section[: section.index("\n## ", 1)]
    names: set[str] = set()
    for line in section.splitlines():
        if line.startswith("| `"):
            first_cell = line.split("|")[1]
            names.update(re.findall(r"`([A-Z][A-Z0-9_]*)`", first_cell))
    return names


def test_every_setting_is_in_the_readme_table() -> None:
    settings = {name.upper() for name in Settings.model_fields}
    documented = documented_variables()

    assert settings - documented == set(), "add these to README's Configuration table"
    assert documented - settings == set(), "README's Configuration table names variables Settings does not read"
