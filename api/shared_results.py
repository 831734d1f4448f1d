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

from collections import OrderedDict
from collections.abc import AsyncIterable, Callable, Hashable, Mapping
from typing import Any, TypeVar

from graphql import ExecutionResult, FieldNode, VariableNode, Visitor, print_ast, visit
from graphql.execution.executor import Executor
from graphql.execution.values import VariableValues
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext

from ..events.single_flight import MISSING
from ..schema.sharing import SHARE_ATTRIBUTE
from .broadcast import introduce

T = TypeVar("T")


class SharedPayloads:
    """The JSON of shared results' `{"data": ...}` payloads, encoded once per result.

    Every subscriber of a shared result gets the same `data` object (strawberry wraps it in
    its own ExecutionResult per subscriber, but keeps the object), so its encoded payload is
    found by identity: the transport (api/transport.py) asks for it when it sends a `next`
    message and splices it in, instead of encoding the same data once per subscriber. It is
    kept as UTF-8 bytes, what the socket is written (api/ws_frames.py). Entries hold their
    data, so an id is never reused while it is here; the oldest are dropped beyond
    `capacity`.
    """

    def __init__(self, capacity: int = 1024):
        self._capacity = capacity
        self._entries: OrderedDict[int, tuple[object, bytes | None]] = OrderedDict()
        self.encoded_count = 0

    def register(self, data: object) -> None:
        """`data` is a shared result's: its payload may be encoded once for every subscriber."""
        if data is None or id(data) in self._entries:
            return
        self._entries[id(data)] = (data, None)
        while len(self._entries) > self._capacity:
            self._entries.popitem(last=False)

    def encoded_bytes(self, data: object, encode: Callable[[object], str | bytes]) -> bytes | None:
        """The UTF-8 JSON of `{"data": data}`, encoded on first use; None when `data` is not
        a shared result's."""
        entry = self._entries.get(id(data))
        if entry is None or entry[0] is not data:
            return None
        raw = entry[1]
        if raw is None:
            text = encode({"data": data})
            raw = text.encode() if isinstance(text, str) else text
            self._entries[id(data)] = (data, raw)
            self.encoded_count += 1
        return raw

    def encoded(self, data: object, encode: Callable[[object], str | bytes]) -> str | None:
        """As `encoded_bytes`, as text."""
        raw = self.encoded_bytes(data, encode)
        return None if raw is None else raw.decode()


shared_payloads = SharedPayloads()


class _VariableNames(Visitor):
    def __init__(self) -> None:
        super().__init__()
        self.names: set[str] = set()

    def enter_variable(self, node: VariableNode, *_: Any) -> None:
        self.names.add(node.name.value)


class SharingExecutionContext(StrawberryGraphQLCoreExecutionContext):
    _selection_key: Hashable | None = None

    def build_per_event_executor(self, payload: Any) -> Any:
        event_key = getattr(payload, SHARE_ATTRIBUTE, None)
        if event_key is None or getattr(self.context_value, "shared_results", None) is None:
            return _for_one_event(super().build_per_event_executor(payload))
        # graphql-core copies the whole executor for each event and subscriber; a shared
        # event needs that copy only once per selection, to compute the shared result.
        share_key = (event_key, self.selection_key(), getattr(self.context_value, "result_scope", None))
        return _SharedEvent(self, payload, share_key)

    def cancellable_iterable(self, iterable: AsyncIterable[T]) -> AsyncIterable[T]:
        # graphql-core calls this once per subscription, with the resolver's source stream
        # before it first runs: the operation's fan-out seat renders with this executor.
        introduce(self)
        return super().cancellable_iterable(iterable)

    def selection_key(self) -> Hashable:
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


def _for_one_event(executor: Executor[Any]) -> Executor[Any]:
    """`executor`, a per-event copy of a subscription's executor, with a memo of collected
    subfields of its own. graphql-core (3.3) copies the executor shallowly for each event, so
    every event shared the subscription's memo, whose keys are the identities of field lists
    that each execution builds anew (and keeps alive): one entry, with its collected fields,
    per event for as long as the subscription lived (B9, bench/PROFILE.md). Within one event
    the memo still serves every list item."""
    executor._relevant_sub_fields = {}
    return executor


class _SharedEvent:
    """What `build_per_event_executor` returns for a shared event: graphql-core only calls
    its `execute_operation`, which hands out the shared result, executing the selection
    (on a real per-event executor) for the first subscriber only."""

    __slots__ = ("_key", "_parent", "_payload")

    def __init__(self, parent: SharingExecutionContext, payload: Any, key: Hashable):
        self._parent = parent
        self._payload = payload
        self._key = key

    def execute_operation(self, serially: bool | None = None) -> Any:
        parent, payload = self._parent, self._payload
        shared = parent.context_value.shared_results
        # graphql-core takes a result that is not awaitable as it is: every subscriber but
        # the first finds the result ready.
        result = shared.ready(self._key)
        if result is not MISSING:
            return result

        async def run() -> ExecutionResult:
            executor = _for_one_event(StrawberryGraphQLCoreExecutionContext.build_per_event_executor(parent, payload))
            result = executor.execute_operation(serially)
            if parent.is_awaitable(result):
                result = await result
            if isinstance(result, ExecutionResult) and not result.errors:
                shared_payloads.register(result.data)
            return result  # type: ignore[return-value]

        return shared.get(self._key, run, keep=lambda r: not r.errors)


__all__ = ["SharingExecutionContext", "shared_payloads"]
