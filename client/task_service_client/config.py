"""Where the service is and who the client is: from the environment, overridable by arguments.

TASK_SERVICE_URL (default http://127.0.0.1:8080), AGENT_NAME, TASK_SERVICE_TOKEN (an agent's
bearer token) or API_KEY (the admin key), TASK_SERVICE_RETRIES (tries per call, 8). With a
token the agent name is optional: the token names the agent.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from urllib.parse import urlsplit, urlunsplit

from .errors import ConfigurationError

DEFAULT_URL = "http://127.0.0.1:8080"


def graphql_http_url(url: str) -> str:
    """The GraphQL endpoint for a base URL (`http://host:8080` or `.../graphql` both work)."""
    parts = urlsplit(url.strip() or DEFAULT_URL)
    if parts.scheme not in {"http", "https"}:
        raise ConfigurationError(f"TASK_SERVICE_URL must start with http:// or https://; got {url!r}")
    path = parts.path.rstrip("/")
    if not path.endswith("/graphql"):
        path += "/graphql"
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def graphql_ws_url(url: str) -> str:
    """The WebSocket endpoint matching `graphql_http_url(url)` (ws:// or wss://)."""
    http = urlsplit(graphql_http_url(url))
    return urlunsplit(("wss" if http.scheme == "https" else "ws", http.netloc, http.path, http.query, ""))


def _positive_int(value: str | None, name: str, default: int) -> int:
    if not value:
        return default
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise ConfigurationError(f"{name} must be a whole number of at least 1; got {value!r}")
    return number


@dataclass(frozen=True)
class Config:
    url: str = DEFAULT_URL
    agent: str | None = None
    token: str | None = None
    api_key: str | None = None
    timeout: float = 30.0
    retries: int = 8

    @classmethod
    def from_env(cls, **overrides: object) -> Config:
        """The environment's settings, with every non-None override applied on top."""
        env = os.environ
        config = cls(
            url=env.get("TASK_SERVICE_URL") or DEFAULT_URL,
            agent=env.get("AGENT_NAME") or None,
            token=env.get("TASK_SERVICE_TOKEN") or None,
            api_key=env.get("API_KEY") or None,
            retries=_positive_int(env.get("TASK_SERVICE_RETRIES"), "TASK_SERVICE_RETRIES", 8),
        )
        return replace(config, **{k: v for k, v in overrides.items() if v is not None})  # type: ignore[arg-type]

    def auth_headers(self) -> dict[str, str]:
        """The credential for HTTP requests and the WebSocket connection_init payload."""
        if self.token:
            return {"Authorization": f"Bearer {self.token}"}
        if self.api_key:
            return {"X-API-Key": self.api_key}
        return {}
