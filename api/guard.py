"""Rate limits on mutations, per caller (ratelimit.py), before anything executes.

A mutation operation costs one unit per root field it runs, so thirty aliased mutations
in one request count as thirty. A refusal is RATE_LIMITED with `extensions.retryAfter`
(seconds); over HTTP it is also a 429 with a Retry-After header.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from graphql import ExecutionResult, FieldNode, GraphQLError, OperationDefinitionNode
from starlette.responses import Response
from strawberry.extensions import SchemaExtension
from strawberry.types.graphql import OperationType

from ..errors import RateLimited
from ..resolvers.context import Context


class MutationRateLimit(SchemaExtension):
    async def on_execute(self) -> AsyncIterator[None]:
        execution = self.execution_context
        if execution.operation_type is OperationType.MUTATION:
            refusal = await rate_limit_refusal(execution.context, execution.graphql_document, execution.operation_name)
            if refusal is not None:
                # A result set here replaces the execution, and the error still goes through
                # the error mapping (an exception would skip it).
                execution.result = refusal
        yield


async def rate_limit_refusal(context: object, document: object, operation_name: str | None) -> ExecutionResult | None:
    """For a mutation about to run: None when the caller is within its budget (the units
    are taken), else the RATE_LIMITED result to send instead (over HTTP, the response
    becomes a 429 with Retry-After)."""
    limiter = context.services.rate_limiter if isinstance(context, Context) else None
    if limiter is None:
        return None
    assert isinstance(context, Context)
    wait = await limiter.hit(context.caller.rate_key, cost=_root_fields(document, operation_name))
    if wait is None:
        return None
    if isinstance(context.response, Response):
        context.response.status_code = 429
        context.response.headers["Retry-After"] = str(wait)
    refusal = RateLimited(
        f"too many mutations from this caller ({limiter.description}, RATE_LIMIT); retry in {wait} s",
        retry_after=wait,
    )
    return ExecutionResult(data=None, errors=[GraphQLError(refusal.message, original_error=refusal)])


def _root_fields(document: object, operation_name: str | None) -> int:
    for definition in getattr(document, "definitions", ()):
        if isinstance(definition, OperationDefinitionNode) and (
            operation_name is None or (definition.name is not None and definition.name.value == operation_name)
        ):
            return max(1, sum(1 for s in definition.selection_set.selections if isinstance(s, FieldNode)))
    return 1
