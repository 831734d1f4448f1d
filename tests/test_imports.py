"""The suite imports the service one way only: as `task_service` (and the agent client,
client/, as `task_service_client`).

The repository root is the `task_service` package itself (pyproject's package-dir), so with
the root on sys.path (`python -m pytest` puts the working directory there) a test could
import `settings`, `db` or `schema` as top-level modules: a second copy of each, with its
own globals (another Settings class, another table metadata). The tests themselves are the
`tests` package, which pytest's importlib mode roots at tests/ (README, "Testing").
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("task_service", "task_service_client", "tests")


def modules_from_the_repository() -> dict[str, Path]:
    found = {}
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        if file and Path(file).resolve().is_relative_to(REPO):
            found[name] = Path(file).resolve()
    return found


class TestOneWayIn:
    def test_every_module_of_the_repository_is_imported_under_its_package(self) -> None:
        # Collection has imported every selected test module (and what they import) by now.
        # pytest itself loads the root's __init__.py (the repository root is a package to
        # it), looking for setup_module, under a name taken from the checkout's directory
        # (`main`, or `__init__` when that is no identifier); it holds only the version.
        strays = {
            name: str(path.relative_to(REPO))
            for name, path in modules_from_the_repository().items()
            if name.partition(".")[0] not in PACKAGES and path != REPO / "__init__.py"
        }
        assert not strays, f"imported outside {PACKAGES}: {strays}"

    def test_task_service_is_this_repository(self) -> None:
        import task_service

        assert Path(task_service.__file__).resolve() == REPO / "__init__.py"
