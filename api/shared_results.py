"""Execute each subscription event once per selection, for every subscriber that shares it.

graphql-core executes the subscription's selection set once per event for each subscriber:
with 500 dashboards on taskEvents that is 500 identical executions per event, and they, not
the database, bound fan-out. A subscription resolver marks a payload as shareable with
`share(payload, key)` (schema/sharing.py) (key: the event, e.g. its cursor). This executor then keys the
per-event result by (event key, the selection as printed, the values of the variables used
inside it), executes it for the first subscriber and hands the same ExecutionResult to the
others (events/single_flight.py; the cache lives in Services, one per database).

A result depends only on the event and the selection: subscription fields resolve to the
payload, and what their sub-fields read is the same for every subscriber. Results with
errors are not cached. Per-viewer results (once there are viewers) would add the viewer to
the key: the Context's `result_scope`.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

from graphql import ExecutionResult, FieldNode, VariableNode, Visitor, print_ast, visit
from graphql.execution.values import VariableValues
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext

from ..schema.sharing import SHARE_ATTRIBUTE


class _VariableNames(Visitor):
    def __init__(self) -> None:
        super().__init__()
        self.names: set[str] = set()

    def enter_variable(self, node: VariableNode, *_: Any) -> None:
        self.names.add(node.name.value)


class SharingExecutionContext(StrawberryGraphQLCoreExecutionContext):
    _selection_key: Hashable | None = None
    _share_key: Hashable | None = None

    def build_per_event_executor(self, payload: Any) -> Any:
        executor = super().build_per_event_executor(payload)
        event_key = getattr(payload, SHARE_ATTRIBUTE, None)
        if (
            isinstance(executor, SharingExecutionContext)
            and event_key is not None
            and getattr(self.context_value, "shared_results", None) is not None
        ):
            executor._share_key = (event_key, self._selection(), getattr(self.context_value, "result_scope", None))
        return executor

    def _selection(self) -> Hashable:
        """The operation's per-event shape: the root fields' selections (not their arguments,
        which only choose the events), the fragments, and the variables used inside them."""
        if self._selection_key is None:
            parts: list[str] = []
            finder = _VariableNames()
            for selection in self.operation.selection_set.selections:
                if isinstance(selection, FieldNode):
                    parts.append(selection.alias.value if selection.alias else selection.name.value)
                    if selection.selection_set is not None:
                        parts.append(print_ast(selection.selection_set))
                        visit(selection.selection_set, finder)
                    if selection.directives:
                        parts.extend(print_ast(d) for d in selection.directives)
                        for directive in selection.directives:
                            visit(directive, finder)
                else:
                    parts.append(print_ast(selection))
                    visit(selection, finder)
            for name in sorted(self.fragment_definitions):
                fragment = self.fragment_definitions[name]
                parts.append(print_ast(fragment))
                visit(fragment, finder)
            variables = self.variable_values
            coerced: Mapping[str, Any] = (
                variables.coerced if isinstance(variables, VariableValues) else variables
            ) or {}
            values = tuple(sorted((name, repr(coerced.get(name))) for name in finder.names))
            self._selection_key = (tuple(parts), values)
        return self._selection_key

    def execute_operation(self, serially: bool | None = None) -> Any:
        if self._share_key is None:
            return super().execute_operation(serially)
        execute = super().execute_operation

        async def run() -> ExecutionResult:
            result = execute(serially)
            if self.is_awaitable(result):
                result = await result
            return result  # type: ignore[return-value]

        return self.context_value.shared_results.get(self._share_key, run, keep=lambda r: not r.errors)


__all__ = ["SharingExecutionContext"]
