"""deploy/nginx/task-service.conf: it passes `nginx -t` with a test certificate, and a real
nginx run with it redirects HTTP to HTTPS, carries GraphQL and WebSocket subscriptions, and
passes the client's address, which the service believes only from TRUSTED_PROXIES."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import websockets

from tests.e2e.conftest import free_port, fresh_pg_database
from tests.ops.helpers import REPO, answers_at, serving, wait_for

pytestmark = [pytest.mark.timeout(180)]

SITE = REPO / "deploy" / "nginx" / "task-service.conf"
CLIENT_ADDRESS = "203.0.113.7"  # TEST-NET-3: an address that is nobody's


def nginx() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if found is None:
        pytest.fail("nginx is required (apt-get install nginx; .ci/run installs it)", pytrace=False)
    return found


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost"),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


def site_for_test(directory: Path, *, http: int = 80, https: int = 443, upstream: int = 8080) -> Path:
    """The shipped site with the test certificate, and (for a live run) local ports."""
    cert, key = self_signed_certificate(directory)
    site = SITE.read_text()
    site = re.sub(r"ssl_certificate\s+\S+;", f"ssl_certificate {cert};", site)
    site = re.sub(r"ssl_certificate_key\s+\S+;", f"ssl_certificate_key {key};", site)
    if (http, https) != (80, 443):
        site = site.replace("listen [::]:80;", "").replace("listen [::]:443 ssl http2;", "")
        site = site.replace("listen 80;", f"listen 127.0.0.1:{http};")
        site = site.replace("listen 443 ssl http2;", f"listen 127.0.0.1:{https} ssl http2;")
        site = site.replace("server 127.0.0.1:8080;", f"server 127.0.0.1:{upstream};")
    path = directory / "task-service.conf"
    path.write_text(site)
    return path


def main_config(directory: Path, site: Path) -> Path:
    """A minimal nginx.conf around the site, with every path inside `directory`."""
    temp = "\n".join(
        f"    {kind}_temp_path {directory / kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    user = "user root;" if os.geteuid() == 0 else ""  # workers must read the test's private directory
    config = directory / "nginx.conf"
    config.write_text(
        f"""{user}
pid {directory / "nginx.pid"};
error_log {directory / "error.log"} info;
events {{ worker_connections 256; }}
http {{
    access_log {directory / "access.log"};
{temp}
    include {site};
}}
"""
    )
    return config


class TestConfiguration:
    def test_nginx_accepts_the_site(self, tmp_path: Path) -> None:
        config = main_config(tmp_path, site_for_test(tmp_path))

        result = subprocess.run(
            [nginx(), "-t", "-p", str(tmp_path), "-e", str(tmp_path / "error.log"), "-c", str(config)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

        assert result.returncode == 0, result.stderr
        assert "test is successful" in result.stderr

    def test_the_site_says_what_a_proxy_of_subscriptions_needs(self) -> None:
        site = SITE.read_text()
        assert "return 301 https://$host$request_uri;" in site
        assert "proxy_set_header Upgrade $http_upgrade;" in site
        assert "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;" in site
        assert "proxy_set_header X-Forwarded-Proto $scheme;" in site
        timeout = re.search(r"proxy_read_timeout (\d+)s;", site)
        assert timeout is not None
        assert int(timeout.group(1)) >= 3600


@contextlib.asynccontextmanager
async def proxying(workdir: Path, upstream: int) -> AsyncIterator[tuple[int, int]]:
    """nginx with the shipped site in front of `upstream`: its (http, https) ports."""
    http, https = free_port(), free_port()
    config = main_config(workdir, site_for_test(workdir, http=http, https=https, upstream=upstream))
    process = await asyncio.create_subprocess_exec(
        nginx(),
        "-p",
        str(workdir),
        "-e",
        str(workdir / "error.log"),
        "-c",
        str(config),
        "-g",
        "daemon off;",
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        await wait_for(lambda: answers_at(f"https://127.0.0.1:{https}/health"), what="nginx")
        yield http, https
    finally:
        process.terminate()
        await process.wait()


def clients_logged(log: Path, operation: str) -> list[str]:
    records = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    return [r["client"] for r in records if r.get("operation") == operation]


@pytest.mark.postgres_only
class TestBehindNginx:
    async def test_https_websocket_and_the_clients_address(self, tmp_path: Path) -> None:
        async with (
            fresh_pg_database("ts_ops") as url,
            serving(url, tmp_path, TRUSTED_PROXIES="127.0.0.1") as (port, log),
            proxying(tmp_path, port) as (http, https),
        ):
            async with httpx.AsyncClient(verify=False, trust_env=False, timeout=30) as client:  # noqa: S501
                redirect = await client.get(f"http://127.0.0.1:{http}/health", follow_redirects=False)
                assert redirect.status_code == 301
                assert redirect.headers["location"] == "https://127.0.0.1/health"
                response = await client.post(
                    f"https://127.0.0.1:{https}/graphql",
                    json={"query": "query ThroughNginx { projects { id } }"},
                    headers={"X-Forwarded-For": CLIENT_ADDRESS},
                )
                assert response.json() == {"data": {"projects": []}}
                assert response.headers["x-request-id"]  # nginx's $request_id, used by the service
            await self.subscription_through(https, client_url=f"https://127.0.0.1:{https}")

            assert clients_logged(log, "ThroughNginx") == [CLIENT_ADDRESS]

    async def subscription_through(self, https: int, *, client_url: str) -> None:
        tls = ssl.create_default_context()
        tls.check_hostname = False
        tls.verify_mode = ssl.CERT_NONE
        async with websockets.connect(
            f"wss://127.0.0.1:{https}/graphql", subprotocols=["graphql-transport-ws"], ssl=tls, open_timeout=10
        ) as ws:  # type: ignore[list-item]
            await ws.send(json.dumps({"type": "connection_init", "payload": {}}))
            assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "connection_ack"
            query = "subscription { taskEvents { type } }"
            await ws.send(json.dumps({"id": "1", "type": "subscribe", "payload": {"query": query}}))
            async with httpx.AsyncClient(verify=False, trust_env=False, timeout=30) as client:  # noqa: S501
                created = await client.post(
                    f"{client_url}/graphql", json={"query": 'mutation { createProject(input: {name: "p"}) { id } }'}
                )
                pid = created.json()["data"]["createProject"]["id"]
                mutation = (
                    f'mutation {{ createTask(input: {{projectId: "{pid}", title: "t", taskType: "x"}}) {{ id }} }}'
                )
                await client.post(f"{client_url}/graphql", json={"query": mutation})
            message = json.loads(await asyncio.wait_for(ws.recv(), 30))
            assert message == {"id": "1", "type": "next", "payload": {"data": {"taskEvents": {"type": "CREATED"}}}}

    async def test_an_untrusted_proxy_cannot_choose_the_clients_address(self, tmp_path: Path) -> None:
        async with (
            fresh_pg_database("ts_ops") as url,
            serving(url, tmp_path, TRUSTED_PROXIES="10.9.9.9") as (port, log),
            proxying(tmp_path, port) as (_, https),
        ):
            async with httpx.AsyncClient(verify=False, trust_env=False, timeout=30) as client:  # noqa: S501
                await client.post(
                    f"https://127.0.0.1:{https}/graphql",
                    json={"query": "query Spoofed { projects { id } }"},
                    headers={"X-Forwarded-For": CLIENT_ADDRESS},
                )

            assert clients_logged(log, "Spoofed") == ["127.0.0.1"]
