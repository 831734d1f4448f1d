"""Who is calling, and what they may do: credentials become a Caller once per request (or
per WebSocket connection); resolvers ask the Caller before they act.

With API_KEY unset the service is open (role OPEN): anyone may do anything, naming the
agent they act as. With API_KEY set, a request carries the admin key (`X-API-Key`, or
`Authorization: Bearer <admin key>`) or an agent's token (`Authorization: Bearer tsa_...`);
anything else is ANONYMOUS and refused before its operation is even parsed. The README's
permission matrix is the contract for what each role may do; tests/security checks every
cell of it.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum

from ..db.base import utcnow
from ..errors import BadInput, Forbidden, NotFound
from ..schema import validate
from ..services import Services

log = logging.getLogger(__name__)

CREDENTIAL_HELP = "send X-API-Key: <admin key> or Authorization: Bearer <agent token>"


class Role(StrEnum):
    OPEN = "open"  # API_KEY unset: everyone may act as any agent
    ADMIN = "admin"  # the admin key
    AGENT = "agent"  # an agent's token: acts only as that agent
    ANONYMOUS = "anonymous"  # API_KEY set and no valid credential: refused


@dataclass(frozen=True)
class Caller:
    role: Role
    agent_id: int | None = None
    agent_name: str | None = None
    client_ip: str | None = None
    problem: str | None = None  # why an ANONYMOUS caller is refused, for the error message

    @classmethod
    def open(cls, client_ip: str | None = None) -> Caller:
        return cls(Role.OPEN, client_ip=client_ip)

    @classmethod
    def admin(cls, client_ip: str | None = None) -> Caller:
        return cls(Role.ADMIN, client_ip=client_ip)

    @classmethod
    def anonymous(cls, problem: str, client_ip: str | None = None) -> Caller:
        return cls(Role.ANONYMOUS, client_ip=client_ip, problem=problem)

    @property
    def authenticated(self) -> bool:
        return self.role is not Role.ANONYMOUS

    @property
    def is_agent(self) -> bool:
        return self.role is Role.AGENT

    @property
    def rate_key(self) -> str:
        """Whose budget a mutation counts against: the agent, the admin key, or the address."""
        if self.role is Role.AGENT:
            return f"agent:{self.agent_id}"
        if self.role is Role.ADMIN:
            return "admin"
        return f"ip:{self.client_ip or 'unknown'}"

    @property
    def scope(self) -> Hashable:
        """What this caller may see, as a key: subscription results executed once are shared
        only between subscribers with the same scope (api/shared_results.py). Per agent,
        not per role, so that no field can ever depend on who is asking without it showing."""
        return (self.role.value, self.agent_id)

    def acting_agent(self, named: str | None) -> str:
        """The agent this call acts as. An agent token acts as its own agent (naming another
        is FORBIDDEN); the admin key and an open service must name one."""
        if self.role is Role.AGENT:
            assert self.agent_name is not None
            if named is not None and named.strip() != self.agent_name:
                raise Forbidden(
                    f"this token belongs to agent '{self.agent_name}', which cannot act as agent '{named.strip()}'; "
                    "omit agent or use that agent's own token"
                )
            return self.agent_name
        if named is None:
            raise BadInput("agent is required: pass the name of the agent acting (or call with the agent's token)")
        name = validate.name(named, "agent")
        assert name is not None
        return name

    def idempotency_owner(self, named_agent: str | None = None) -> str:
        """Whose idempotency keys a mutation uses: a repeat must come from the same caller."""
        if self.role is Role.AGENT:
            return f"agent:{self.agent_name}"
        if self.role is Role.ADMIN:
            return f"admin:{named_agent}" if named_agent else "admin"
        return f"agent:{named_agent}" if named_agent else "anonymous"

    @property
    def actor(self) -> str:
        """The name written as the `actor` of the events this caller causes."""
        if self.role is Role.AGENT:
            assert self.agent_name is not None
            return self.agent_name
        return "admin" if self.role is Role.ADMIN else "anonymous"

    def require_admin(self, action: str) -> None:
        if self.role is Role.AGENT:
            raise Forbidden(f"an agent token cannot {action}; use the admin key")

    def require_self(self, name: str, action: str) -> None:
        """Agents may manage only themselves (register, unregister, restore)."""
        if self.role is Role.AGENT and name != self.agent_name:
            raise Forbidden(
                f"agent '{self.agent_name}' cannot {action} agent '{name}'; only the admin key or its own token can"
            )

    def require_creator(self, created_by: str | None, what: str, action: str) -> None:
        """Deleting and restoring: the admin, or the agent that created the thing."""
        if self.role is Role.AGENT and created_by != self.agent_name:
            raise Forbidden(
                f"agent '{self.agent_name}' did not create {what} and cannot {action} it; "
                "only its creator or the admin key can"
            )


def header_credentials(headers: Mapping[str, str]) -> tuple[str | None, str | None]:
    """(X-API-Key, Authorization) from request headers or a connection_init payload: names
    are matched case-insensitively, and a payload may nest them under "headers"."""
    found: dict[str, str] = {}
    nested = headers.get("headers")
    for source in (nested if isinstance(nested, Mapping) else {}, headers):
        for key, value in source.items():
            if isinstance(key, str) and isinstance(value, str) and key.lower() in {"x-api-key", "authorization"}:
                found[key.lower()] = value
    return found.get("x-api-key"), found.get("authorization")


async def authenticate(
    services: Services, api_key: str | None, authorization: str | None, *, client_ip: str | None
) -> Caller:
    """The Caller these credentials name. Never raises for bad credentials: a wrong or
    missing one gives an ANONYMOUS caller whose `problem` says what is wrong. An agent's
    authenticated call counts as a heartbeat (refreshed at most every sixth of the
    heartbeat timeout, so a busy agent does not write on every request)."""
    settings = services.settings
    if settings.api_key is None:
        return Caller.open(client_ip)
    if api_key is not None:
        if _same(api_key, settings.api_key):
            return Caller.admin(client_ip)
        return Caller.anonymous("the X-API-Key is not the service's key; " + CREDENTIAL_HELP, client_ip)
    if authorization is None:
        return Caller.anonymous("this service needs a credential: " + CREDENTIAL_HELP, client_ip)
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return Caller.anonymous("the Authorization header must be 'Bearer <agent token>'", client_ip)
    if _same(token, settings.api_key):
        return Caller.admin(client_ip)
    agent = await services.agent_by_token(token)
    if agent is None:
        return Caller.anonymous(
            "the agent token is not valid (unknown, rotated by re-registering, or revoked by unregistering)",
            client_ip,
        )
    stale_after = timedelta(seconds=settings.heartbeat_timeout_seconds / 6)
    if agent.last_heartbeat_at is None or utcnow() - agent.last_heartbeat_at > stale_after:
        # A heartbeat (Services.heartbeat); an agent unregistered meanwhile is left alone.
        with contextlib.suppress(NotFound):
            await services.heartbeat(agent.name)
    return Caller(Role.AGENT, agent_id=agent.id, agent_name=agent.name, client_ip=client_ip)


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())
