"""The lock files pin a version of every dependency that pyproject.toml's bounds allow, and the
bounds are tight where the code relies on a library's internals."""

from __future__ import annotations

import re
import tomllib

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.ops.helpers import REPO

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def locked(name: str) -> dict[str, Version]:
    pins = re.findall(r"^([A-Za-z0-9._-]+)==([^\s;\\]+)", (REPO / name).read_text(), flags=re.MULTILINE)
    return {canonicalize_name(package): Version(version) for package, version in pins}


def requirements(extra: str | None = None) -> list[Requirement]:
    listed = PYPROJECT["dependencies"] + (PYPROJECT["optional-dependencies"][extra] if extra else [])
    return [Requirement(line) for line in listed]


@pytest.mark.parametrize(("lock", "extra"), [("requirements.lock", None), ("requirements-dev.lock", "dev")])
def test_the_lock_satisfies_pyproject(lock: str, extra: str | None) -> None:
    pins = locked(lock)
    for requirement in requirements(extra):
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{lock} lacks {name}: run scripts/lock.sh --keep"
        assert pins[name] in requirement.specifier, f"{lock} pins {name} {pins[name]} outside {requirement.specifier}"


def lower_bound(requirement: Requirement) -> Version | None:
    """The lowest version `requirement` admits by its >=, ~= or == clauses; None when it has none."""
    floors = [Version(spec.version) for spec in requirement.specifier if spec.operator in {">=", "~=", "=="}]
    return max(floors) if floors else None


@pytest.mark.parametrize(("lock", "extra"), [("requirements.lock", None), ("requirements-dev.lock", "dev")])
def test_lower_bounds_are_what_the_lock_tests(lock: str, extra: str | None) -> None:
    """A lower bound older than the locked minor promises versions no test has run on (e.g.
    uvicorn>=0.29 while CIDRs in TRUSTED_PROXIES need 0.31 and the lock has 0.54)."""
    pins = locked(lock)
    for requirement in requirements(extra):
        name = canonicalize_name(requirement.name)
        if extra and requirement in requirements():
            continue  # the service's own, checked against requirements.lock
        floor = lower_bound(requirement)
        assert floor is not None, f"{name} has no lower bound"
        pin = pins[name]
        assert floor <= pin, f"{name}: lower bound {floor} is above the locked {pin}"
        assert floor.release[:2] >= pin.release[:2], (
            f"{name}: lower bound {floor} is older than the locked minor {pin.major}.{pin.minor}: "
            f"raise it to >={pin.major}.{pin.minor} (or lock and test the older version)"
        )


def test_the_client_asks_for_what_the_dev_lock_tests() -> None:
    pins = locked("requirements-dev.lock")
    client = tomllib.loads((REPO / "client" / "pyproject.toml").read_text())["project"]["dependencies"]
    for requirement in map(Requirement, client):
        pin = pins[canonicalize_name(requirement.name)]
        floor = lower_bound(requirement)
        assert floor is not None
        assert pin in requirement.specifier
        assert floor.release[:2] >= pin.release[:2], f"client/pyproject.toml: {requirement} is older than {pin}"


def test_internals_we_rely_on_are_bounded() -> None:
    bounds = {canonicalize_name(r.name): r.specifier for r in requirements()}
    # api/shared_results.py: graphql-core's and strawberry's execution context.
    assert Version("3.3.99") in bounds["graphql-core"]
    assert Version("3.4.0") not in bounds["graphql-core"]
    assert Version("0.342.0") not in bounds["strawberry-graphql"]
    # events/redis_backend.py subclasses broadcaster's private backend base class.
    assert [spec.operator for spec in bounds["broadcaster"]] == ["=="]
    # api/ws_frames.py reads uvicorn's websockets-sansio connection and websockets' protocol.
    assert Version("0.55.0") not in bounds["uvicorn"]
    assert Version("18.0") not in bounds["websockets"]
    for name, specifier in bounds.items():
        assert any(spec.operator in {"<", "=="} for spec in specifier), f"{name} has no upper bound"


def test_the_image_and_ci_install_from_the_lock() -> None:
    assert "--require-hashes -r requirements.lock" in (REPO / "Dockerfile").read_text()
    assert "--require-hashes -r requirements-dev.lock" in (REPO / ".ci" / "run").read_text()
    assert "scripts/lock.sh" in (REPO / "README.md").read_text()
