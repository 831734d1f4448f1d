"""The HTTP surface (docs/ARCHITECTURE.md): /, /health, /docs, /schema.graphql, /dashboard/stats, /graphql."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from task_service.app import create_app
from task_service.settings import Settings

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(database_url=f"sqlite:///{tmp_path}/app.db")
    with TestClient(create_app(settings)) as test_client:
        yield test_client


class TestRoot:
    def test_api_clients_get_status_json(self, client: TestClient) -> None:
        response = client.get("/")
        assert response.status_code == 200
        body = response.json()
        assert body["status"] == "ok"
        assert body["service"] == "task-service"
        assert body["version"]
        assert body["heartbeatTimeoutSeconds"] == 90

    def test_browsers_are_redirected_to_the_dashboard(self, client: TestClient) -> None:
        response = client.get("/", headers={"Accept": "text/html,*/*"}, follow_redirects=False)
        assert response.status_code in (302, 307)
        assert response.headers["location"] == "/dashboard/"


class TestHealth:
    def test_healthy_database_is_200(self, client: TestClient) -> None:
        response = client.get("/health")
        assert response.status_code == 200
        body = response.json()
        assert body["status"] == "ok"
        assert body["database"] == "ok"
        assert body["uptimeSeconds"] >= 0

    def test_unreachable_database_is_503(self) -> None:
        # Nothing listens on port 1; migrations are off so startup itself succeeds.
        settings = Settings(
            database_url="postgresql://postgres@127.0.0.1:1/none", auto_migrate=False, reaper_interval_seconds=60
        )
        with TestClient(create_app(settings)) as test_client:
            response = test_client.get("/health")
        assert response.status_code == 503
        assert response.json()["database"] == "unreachable"


class TestDocsAndSchema:
    def test_docs_redirects_to_graphiql(self, client: TestClient) -> None:
        response = client.get("/docs", follow_redirects=False)
        assert response.status_code in (302, 307)
        assert response.headers["location"] == "/graphql"

    def test_graphiql_is_served_to_browsers(self, client: TestClient) -> None:
        response = client.get("/graphql", headers={"Accept": "text/html"})
        assert response.status_code == 200
        assert "graphiql" in response.text.lower()

    def test_schema_sdl_is_served_and_matches_the_committed_file(self, client: TestClient) -> None:
        response = client.get("/schema.graphql")
        assert response.status_code == 200
        assert response.text == (REPO / "schema.graphql").read_text()


class TestGraphQLOverHTTP:
    def test_query_over_get(self, client: TestClient) -> None:
        response = client.get("/graphql", params={"query": "{ projects { id } }"})
        assert response.status_code == 200
        assert response.json() == {"data": {"projects": []}}

    def test_mutations_over_get_are_refused(self, client: TestClient) -> None:
        query = 'mutation { createProject(input: {name: "x"}) { id } }'
        response = client.get("/graphql", params={"query": query})
        assert response.status_code in (400, 405)
        assert client.post("/graphql", json={"query": "{ projects { id } }"}).json()["data"]["projects"] == []

    def test_domain_error_carries_its_code(self, client: TestClient) -> None:
        response = client.post("/graphql", json={"query": '{ task(id: "nope") { id } }'})
        error = response.json()["errors"][0]
        assert error["extensions"]["code"] == "BAD_USER_INPUT"
        assert "Traceback" not in response.text


class TestDashboardStatsJson:
    def test_plain_json_matches_the_graphql_numbers(self, client: TestClient) -> None:
        created = client.post(
            "/graphql",
            json={"query": 'mutation { createProject(input: {name: "p"}) { id } }'},
        ).json()["data"]["createProject"]["id"]
        client.post(
            "/graphql",
            json={
                "query": "mutation($p: ID!) { createTask(input: "
                '{projectId: $p, title: "t", taskType: "research"}) { id } }',
                "variables": {"p": created},
            },
        )
        body = client.get("/dashboard/stats").json()
        assert body["tasks"]["total"] == 1
        assert body["tasks"]["ready"] == 1
        assert body["projects"] == {"total": 1, "active": 1}
        assert body["recentEvents"][0]["type"] == "CREATED"
        scoped = client.get("/dashboard/stats", params={"projectId": created}).json()
        assert scoped["tasks"]["total"] == 1

    def test_bad_project_id_is_a_400(self, client: TestClient) -> None:
        response = client.get("/dashboard/stats", params={"projectId": "x"})
        assert response.status_code == 400
        assert response.json()["code"] == "BAD_USER_INPUT"
