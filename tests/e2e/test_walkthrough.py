"""The README's walk-through, command by command, against a real server."""

from __future__ import annotations

import asyncio
import json
import re
import shlex
from datetime import UTC, datetime, timedelta
from pathlib import Path

from task_service.settings import Settings
from tests.e2e.conftest import fresh_pg_database, running_server

README = Path(__file__).resolve().parents[2] / "README.md"
README_BASE = "http://127.0.0.1:8080"


def walkthrough_commands() -> list[str]:
    text = README.read_text()
    section = text.split("## Walk-through", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    return [line for block in blocks for line in block.splitlines() if line.startswith("curl ")]


async def run_curl(command: str, base_url: str) -> dict:
    args = shlex.split(command.replace(README_BASE, base_url))
    process = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode == 0, stderr.decode()
    return json.loads(stdout)


class TestReadmeWalkthrough:
    async def test_every_command_succeeds_and_the_story_holds(self, tmp_path: Path) -> None:
        commands = walkthrough_commands()
        assert len(commands) >= 10, "the README walk-through lost its commands"
        async with fresh_pg_database("ts_readme") as url, running_server(url, tmp_path) as server:
            outputs, spans = [], []
            for command in commands:
                sent = datetime.now(UTC)
                body = await run_curl(command, server.url)
                assert "errors" not in body, f"{command}\n-> {body}"
                outputs.append(body)
                spans.append((sent, datetime.now(UTC)))
        by_field = {key: value for body in outputs for key, value in body.get("data", {}).items()}
        assert by_field["registerAgent"]["agent"]["status"] == "ONLINE"
        claimed = dict(by_field["claimNextTask"])
        lease_expires = datetime.fromisoformat(claimed.pop("leaseExpiresAt"))
        assert claimed == {"id": "1", "title": "Write the brief", "status": "ASSIGNED", "attempt": 1}
        # The server runs with the default settings: a lease of HEARTBEAT_TIMEOUT_SECONDS,
        # from the moment of the claim (between sending the command and its answer).
        ((sent, answered),) = [
            span for body, span in zip(outputs, spans, strict=True) if "claimNextTask" in body.get("data", {})
        ]
        lease = timedelta(seconds=Settings.model_fields["heartbeat_timeout_seconds"].default)
        assert sent + lease <= lease_expires <= answered + lease
        assert by_field["submitTask"]["status"] == "REVIEWING"
        assert by_field["reviewTask"]["status"] == "COMPLETED"
        assert by_field["task"] == {"status": "PENDING", "ready": True, "blockedBy": []}
        assert [e["type"] for e in by_field["events"]] == [
            "CREATED",
            "CLAIMED",
            "STARTED",
            "PROGRESS",
            "SUBMITTED",
            "APPROVED",
        ]
        stats = outputs[-1]
        assert stats["tasks"]["completed"] == 1
        assert stats["tasks"]["ready"] == 1
