"""The deployment files say what a deployment needs (there is no Docker engine or cluster
here, so they are parsed and checked), and the container's command lines, run directly on
this machine with the compose environment, migrate and serve."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.e2e.conftest import free_port
from tests.ops.helpers import REPO, clean_env, empty_pg_database, health, libpq, wait_for

COMPOSE = REPO / "docker-compose.yml"
K8S = REPO / "deploy" / "k8s"
DOCKERFILE = REPO / "Dockerfile"
_VARIABLE = re.compile(r"\$\{(\w+)(?::([?-])([^}]*))?\}")


class MissingVariable(Exception):
    pass


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error} substitution, recursively."""
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        name, kind, argument = match.groups()
        if env.get(name):
            return env[name]
        if kind == "?":
            raise MissingVariable(f"{name}: {argument}")
        return argument if kind == "-" else ""

    return _VARIABLE.sub(substitute, value)


def compose(**env: str) -> dict[str, Any]:
    return interpolate(yaml.safe_load(COMPOSE.read_text()), env)


SECRETS = {"DB_PASSWORD": "s3cretpw", "API_KEY": "an-admin-key-of-32-characters-00"}


def k8s() -> dict[str, dict[str, Any]]:
    documents = [doc for path in sorted(K8S.glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return {doc["kind"]: doc for doc in documents}


def dockerfile_final_stage() -> dict[str, Any]:
    """FROM, USER, ENV, HEALTHCHECK and CMD of the Dockerfile's last stage."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    stage = text[text.rindex("\nFROM ") :]
    env = {}
    for line in re.findall(r"^ENV (.+)$", stage, flags=re.MULTILINE):
        env.update(dict(re.findall(r"(\w+)=(\S+)", line)))
    return {
        "from": re.search(r"^FROM (\S+)", stage, flags=re.MULTILINE).group(1),  # type: ignore[union-attr]
        "user": re.search(r"^USER (\S+)", stage, flags=re.MULTILINE).group(1),  # type: ignore[union-attr]
        "env": env,
        "healthcheck": json.loads(re.search(r"^HEALTHCHECK .*? CMD (\[.+\])$", stage, flags=re.MULTILINE).group(1)),  # type: ignore[union-attr]
        "cmd": json.loads(re.search(r"^CMD (\[.+\])$", stage, flags=re.MULTILINE).group(1)),  # type: ignore[union-attr]
    }


class TestCompose:
    def test_secrets_are_required_and_never_defaulted(self) -> None:
        with pytest.raises(MissingVariable, match="DB_PASSWORD"):
            compose(API_KEY="k")
        with pytest.raises(MissingVariable, match="API_KEY"):
            compose(DB_PASSWORD="p")
        services = compose(**SECRETS)["services"]
        assert services["db"]["environment"]["POSTGRES_PASSWORD"] == "s3cretpw"
        assert services["app"]["environment"]["DATABASE_URL"] == "postgresql://taskservice:s3cretpw@db:5432/taskservice"
        assert services["app"]["environment"]["API_KEY"] == SECRETS["API_KEY"]

    def test_the_database_is_private_persistent_and_checked(self) -> None:
        spec = compose(**SECRETS)
        db = spec["services"]["db"]
        assert "ports" not in db
        assert "expose" not in db
        assert "pg_isready" in " ".join(db["healthcheck"]["test"])
        volume = db["volumes"][0].split(":")[0]
        assert volume in spec["volumes"]  # a named volume, not a bind mount

    def test_migrations_run_after_the_database_and_before_the_service(self) -> None:
        services = compose(**SECRETS)["services"]
        assert services["migrate"]["command"] == ["task-service", "migrate"]
        assert services["migrate"]["depends_on"]["db"]["condition"] == "service_healthy"
        assert services["migrate"]["restart"] == "no"
        app = services["app"]
        assert app["command"] == ["task-service", "serve"]
        assert app["depends_on"]["db"]["condition"] == "service_healthy"
        assert app["depends_on"]["migrate"]["condition"] == "service_completed_successfully"

    def test_the_service_listens_on_loopback_unless_told(self) -> None:
        assert compose(**SECRETS)["services"]["app"]["ports"] == ["127.0.0.1:8080:8080"]
        assert compose(**SECRETS, BIND_ADDRESS="0.0.0.0")["services"]["app"]["ports"] == ["0.0.0.0:8080:8080"]  # noqa: S104

    def test_logs_rotate_everywhere(self) -> None:
        for name, service in compose(**SECRETS)["services"].items():
            logging = service["logging"]
            assert logging["driver"] == "json-file", name
            assert logging["options"]["max-size"], name
            assert int(logging["options"]["max-file"]) >= 2, name

    def test_redis_is_an_optional_profile(self) -> None:
        services = compose(**SECRETS)["services"]
        assert services["redis"]["profiles"] == ["redis"]
        assert services["app"]["depends_on"]["redis"]["required"] is False
        assert "ports" not in services["redis"]
        with_redis = compose(**SECRETS, BROADCAST_URL="redis://redis:6379/0")["services"]["app"]["environment"]
        assert with_redis["BROADCAST_URL"] == "redis://redis:6379/0"


class TestDockerfile:
    def test_slim_non_root_hash_checked_and_health_checked(self) -> None:
        stage = dockerfile_final_stage()
        text = DOCKERFILE.read_text()
        assert stage["from"].endswith("-slim")
        assert stage["user"] not in {"root", "0"}
        assert "--require-hashes" in text
        assert "-r requirements.lock" in text
        assert "/health" in " ".join(stage["healthcheck"])
        assert stage["cmd"] == ["task-service", "serve"]
        assert "requirements.lock" not in (REPO / ".dockerignore").read_text()


def dockerignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    """.dockerignore as Docker reads it: (is an exception `!`, regex of the cleaned pattern)."""
    patterns = []
    for raw in (REPO / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        exception = line.startswith("!")
        pattern = line.removeprefix("!").strip().strip("/")
        patterns.append((exception, re.compile(_docker_glob(pattern))))
    return patterns


def _docker_glob(pattern: str) -> str:
    """Docker's matcher (moby/patternmatcher): `**` any number of directories, `*` and `?`
    within one path element, matched against the whole path from the context's root (so
    `*.db` is only the root's, unlike .gitignore)."""
    out, i = "^", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i : end + 1], end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return out + "$"


def build_context() -> set[str]:
    """The repository's files that `docker build .` sends: a path is left out when the last
    pattern matching it or one of its parent directories is not an exception."""
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    patterns = dockerignore_patterns()
    sent = set()
    for path in files:
        parts = path.split("/")
        prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
        excluded = False
        for exception, regex in patterns:
            if any(regex.match(prefix) for prefix in prefixes):
                excluded = not exception
        if not excluded:
            sent.add(path)
    return sent


class TestBuildContext:
    """What the Dockerfile's `pip install .` reads must survive .dockerignore (there is no
    Docker engine here to find out at build time)."""

    def test_the_matcher_reads_docker_patterns(self) -> None:
        assert re.match(_docker_glob("*.db"), "task-service.db")
        assert not re.match(_docker_glob("*.db"), "data/task-service.db")
        assert re.match(_docker_glob("**/*.pyc"), "a/b/c.pyc")
        assert re.match(_docker_glob("**/*.pyc"), "c.pyc")

    def test_everything_pip_install_needs_is_sent(self) -> None:
        context = build_context()
        project = tomllib.loads((REPO / "pyproject.toml").read_text())
        setuptools = project["tool"]["setuptools"]
        # COPY requirements.lock (hash-checked install), then `pip install .` reads these.
        for needed in ("requirements.lock", "pyproject.toml", project["project"]["readme"]):
            assert needed in context, needed
        copied = re.findall(r"^COPY (?!--from)(.+) \S+$", DOCKERFILE.read_text(), flags=re.MULTILINE)
        assert copied == ["requirements.lock", "."], copied
        for sources in copied:
            for source in sources.split():
                assert source == "." or source in context, f"Dockerfile copies {source}, which is ignored"
        # Every package's modules, under its directory (package-dir maps the names).
        package_dir = setuptools["package-dir"]
        for package in setuptools["packages"]:
            top, _, rest = package.partition(".")
            directory = "/".join(part for part in [package_dir[top].strip("./"), *rest.split(".")] if part)
            modules = {f for f in subprocess_ls(directory) if f.endswith(".py")}
            assert modules, f"{package}: no modules under {directory or '.'}"
            assert modules <= context, f"{package}: .dockerignore drops {sorted(modules - context)[:5]}"
        # Package data: the migrations' template and config, the SDL, the dashboard.
        for pattern in setuptools["package-data"]["task_service"]:
            regex = re.compile(_docker_glob(pattern.replace("/**/*", "/**")))
            matched = {f for f in subprocess_ls("", recursive=True) if regex.match(f)}
            assert matched, pattern
            assert matched <= context, f"{pattern}: .dockerignore drops {sorted(matched - context)[:5]}"
        for needed in ("alembic/versions/0001_initial.py", "schema.graphql", "web/index.html", "alembic.ini"):
            assert needed in context, needed

    def test_what_the_image_does_not_need_stays_out(self) -> None:
        context = build_context()
        for left_out in ("tests/conftest.py", "bench/run_all.py", "deploy/backup.sh", "docker-compose.yml"):
            assert left_out not in context, left_out
        assert not any(path.startswith((".git/", ".typecheck/")) for path in context)


def subprocess_ls(directory: str, *, recursive: bool = False) -> set[str]:
    """Tracked files directly in `directory` ('' for the root), or under it when recursive."""
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    prefix = f"{directory}/" if directory else ""
    return {f for f in files if f.startswith(prefix) and (recursive or "/" not in f[len(prefix) :])}


class TestKubernetes:
    def test_replicas_probes_resources_and_migrations_first(self) -> None:
        docs = k8s()
        deployment = docs["Deployment"]
        assert deployment["spec"]["replicas"] == 2
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        (init,) = pod["initContainers"]
        assert init["command"] == ["task-service", "migrate"]
        (container,) = pod["containers"]
        assert container["command"] == ["task-service", "serve"]
        for probe in ("readinessProbe", "livenessProbe"):
            assert container[probe]["httpGet"]["path"] == "/health", probe
        # Liveness gives a database outage time: only readiness reacts at once. /health
        # fails in every pod during an outage, and restarts cannot cure it (README, "Kubernetes
        # with replicas"): a brief outage (a PostgreSQL restart or failover) must not restart pods.
        liveness, readiness = container["livenessProbe"], container["readinessProbe"]
        brief_outage = 60
        assert liveness["periodSeconds"] * liveness["failureThreshold"] >= 2 * brief_outage
        assert liveness["timeoutSeconds"] < liveness["periodSeconds"]
        assert readiness["periodSeconds"] * readiness["failureThreshold"] <= 15
        assert "failureThreshold x periodSeconds" in (K8S / "deployment.yaml").read_text()
        assert container["resources"]["requests"]["cpu"]
        assert container["resources"]["requests"]["memory"]
        assert container["resources"]["limits"]["memory"]

    def test_scrape_annotations_point_at_metrics_and_the_credential_is_documented(self) -> None:
        pod = k8s()["Deployment"]["spec"]["template"]
        annotations = pod["metadata"]["annotations"]
        assert annotations["prometheus.io/path"] == "/metrics"
        ports = {p["containerPort"] for p in pod["spec"]["containers"][0]["ports"]}
        assert int(annotations["prometheus.io/port"]) in ports
        # Annotations carry no credential and the Secret sets API_KEY: the scrape job must.
        readme = (REPO / "README.md").read_text()
        metrics = readme[readme.index("### Metrics") : readme.index("### Logs")]
        config = yaml.safe_load(re.search(r"```yaml\n(.*?)```", metrics, flags=re.DOTALL).group(1))  # type: ignore[union-attr]
        (job,) = config["scrape_configs"]
        assert job["metrics_path"] == "/metrics"
        assert job["authorization"]["type"] == "Bearer"
        assert job["authorization"]["credentials_file"]

    def test_secret_service_and_deployment_fit_together(self) -> None:
        docs = k8s()
        pod = docs["Deployment"]["spec"]["template"]
        secret = docs["Secret"]
        assert set(secret["stringData"]) == {"DATABASE_URL", "API_KEY"}
        for container in pod["spec"]["containers"] + pod["spec"]["initContainers"]:
            assert {"secretRef": {"name": secret["metadata"]["name"]}} in container["envFrom"]
        service = docs["Service"]
        assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
        ports = {p["name"] for p in pod["spec"]["containers"][0]["ports"]}
        assert service["spec"]["ports"][0]["targetPort"] in ports
        kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
        assert "secret.example.yaml" not in kustomization["resources"]


@pytest.mark.postgres_only
@pytest.mark.timeout(180)
class TestContainerCommandLines:
    async def test_migrate_then_serve_as_compose_runs_them(self, tmp_path: Path) -> None:
        services = compose(**SECRETS)["services"]
        stage = dockerfile_final_stage()
        port = free_port()
        async with empty_pg_database() as url:
            # The image's and compose's environment; only the database's address is this machine's.
            env = {**stage["env"], **services["app"]["environment"], "DATABASE_URL": libpq(url)}
            env.update(HOST="127.0.0.1", PORT=str(port))
            env = {key: str(value) for key, value in env.items()}
            env.pop("PATH")

            migrate = await asyncio.to_thread(
                subprocess.run,
                services["migrate"]["command"],
                cwd=tmp_path,
                env=clean_env(**env),
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            assert migrate.returncode == 0, migrate.stderr
            server = await asyncio.create_subprocess_exec(
                *services["app"]["command"],
                cwd=tmp_path,
                env=clean_env(**env),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                await wait_for(lambda: _healthy(port), what="the container command's /health 200")
                check = stage["healthcheck"]
                probe = [sys.executable, *check[1:]] if check[0] == "python" else check
                healthcheck = await asyncio.to_thread(
                    subprocess.run, probe, env=clean_env(**env), capture_output=True, timeout=30, check=False
                )
                assert healthcheck.returncode == 0, healthcheck.stderr
                async with httpx.AsyncClient(trust_env=False, timeout=30) as client:
                    response = await client.post(
                        f"http://127.0.0.1:{port}/graphql",
                        json={"query": "{ projects { id } }"},
                        headers={"X-API-Key": SECRETS["API_KEY"]},
                    )
                assert response.json() == {"data": {"projects": []}}
            finally:
                server.terminate()
                await server.wait()


async def _healthy(port: int) -> bool:
    try:
        status, _ = await health(f"http://127.0.0.1:{port}")
    except httpx.TransportError:
        return False
    return status == 200
