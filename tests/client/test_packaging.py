"""The client is a separate package: it imports nothing of the server, and the service's
dev extra installs exactly the libraries the client's own pyproject declares."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CLIENT = ROOT / "client"
SERVER_ONLY = [
    "task_service",
    "strawberry",
    "sqlalchemy",
    "asyncpg",
    "aiosqlite",
    "alembic",
    "broadcaster",
    "pydantic_settings",
]

BLOCKED_IMPORT = f"""
import importlib.abc, pkgutil, sys

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {SERVER_ONLY!r}:
            raise ImportError("the client imported server module " + name)
        return None

sys.meta_path.insert(0, Block())
import task_service_client
for module in pkgutil.walk_packages(task_service_client.__path__, "task_service_client."):
    __import__(module.name)
from task_service_client.cli.app import build_parser
build_parser()
print("ok")
"""


def test_every_client_module_imports_with_the_server_blocked() -> None:
    result = subprocess.run(
        [sys.executable, "-c", BLOCKED_IMPORT], capture_output=True, text=True, timeout=120, cwd=CLIENT, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_no_client_source_names_the_server() -> None:
    for path in (CLIENT / "task_service_client").rglob("*.py"):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                depth = len(path.relative_to(CLIENT / "task_service_client").parts) - 1
                assert node.level <= depth + 1, f"{path}: relative import leaves the client package"
                names = [node.module or ""] if node.level == 0 else []
            else:
                continue
            for name in names:
                assert name.split(".")[0] not in SERVER_ONLY, f"{path}: imports {name}"


def test_the_dev_extra_installs_the_clients_dependencies_and_script() -> None:
    server = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    client = tomllib.loads((CLIENT / "pyproject.toml").read_text())

    def normalised(requirement: str) -> str:
        return requirement.replace(" ", "").lower().replace("[httpx,websockets]", "[websockets,httpx]")

    dev = {normalised(r) for r in server["optional-dependencies"]["dev"]}
    assert {normalised(r) for r in client["project"]["dependencies"]} <= dev
    assert server["scripts"]["taskctl"] == client["project"]["scripts"]["taskctl"]
    packaged = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    assert set(client["tool"]["setuptools"]["packages"]) <= set(packaged)
