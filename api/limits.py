"""What one operation may ask for: depth, aliases, cost, directives and repeated fields.

Each limit is a graphql-core validation rule built once (so the ValidationCache keeps
working: a document seen before is not validated again) and refuses with
QUERY_TOO_COMPLEX. The rules walk each fragment once and remember its result, so a
"fragment bomb" (fragments spreading each other many times over) costs linear time, and
a fragment cycle (refused by graphql-core's own NoFragmentCyclesRule) cannot loop.

Cost model (MAX_QUERY_COST): every field costs 1; a field with a `first` argument
multiplies the cost of its selection by `first` (its literal value; for a variable, the
variable's default or else MAX_PAGE_SIZE; absent, the argument's default); other lists of
objects multiply by LIST_FACTOR, except `nodes` of a connection (its `first` already
counts). Introspection counts like any other field. Depth (MAX_QUERY_DEPTH) counts the
API's own fields; introspection has its own, deeper bound (type references nest deeply
in the standard introspection query), and cost bounds it too.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from graphql import (
    DirectiveNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLInterfaceType,
    GraphQLList,
    GraphQLNamedType,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLSchema,
    InlineFragmentNode,
    IntValueNode,
    Node,
    OperationDefinitionNode,
    SelectionSetNode,
    ValidationContext,
    ValidationRule,
    VariableNode,
    get_named_type,
)
from graphql.type.introspection import SchemaMetaFieldDef, TypeMetaFieldDef, TypeNameMetaFieldDef

from ..errors import ErrorCode

LIST_FACTOR = 10
INTROSPECTION_DEPTH = 20
MAX_FIELD_REPEATS = 5  # the same field, unaliased, this many times in one selection set


@dataclass(frozen=True)
class Limits:
    max_depth: int
    max_aliases: int
    max_cost: int
    max_directives: int
    max_page_size: int


def too_complex(message: str, node: Node | None = None) -> GraphQLError:
    return GraphQLError(message, nodes=node, extensions={"code": ErrorCode.QUERY_TOO_COMPLEX.value})


@dataclass
class _Measure:
    cost: int = 0
    depth: int = 0  # of the API's own fields
    raw_depth: int = 0  # of every field, introspection included
    aliases: int = 0


@dataclass
class _Walker:
    schema: GraphQLSchema
    limits: Limits
    fragments: dict[str, FragmentDefinitionNode]
    variable_defaults: dict[str, int]
    memo: dict[str, _Measure] = field(default_factory=dict)
    active: set[str] = field(default_factory=set)

    def selection_set(self, node: SelectionSetNode, parent: GraphQLNamedType | None) -> _Measure:
        total = _Measure()
        for selection in node.selections:
            if isinstance(selection, FieldNode):
                part = self.field(selection, parent)
            elif isinstance(selection, InlineFragmentNode):
                condition = selection.type_condition
                target = self.schema.get_type(condition.name.value) if condition else parent
                part = self.selection_set(selection.selection_set, target)
            elif isinstance(selection, FragmentSpreadNode):
                part = self.fragment(selection.name.value)
            else:  # pragma: no cover - the grammar has no other selection
                continue
            total.cost += part.cost
            total.aliases += part.aliases
            total.depth = max(total.depth, part.depth)
            total.raw_depth = max(total.raw_depth, part.raw_depth)
        return total

    def fragment(self, name: str) -> _Measure:
        if name in self.memo:
            return self.memo[name]
        fragment = self.fragments.get(name)
        if fragment is None or name in self.active:
            return _Measure()  # unknown or cyclic: graphql-core's own rules report it
        self.active.add(name)
        measure = self.selection_set(fragment.selection_set, self.schema.get_type(fragment.type_condition.name.value))
        self.active.discard(name)
        self.memo[name] = measure
        return measure

    def field(self, node: FieldNode, parent: GraphQLNamedType | None) -> _Measure:
        name = node.name.value
        introspection = name.startswith("__")
        definition = None
        if name == "__schema":
            definition = SchemaMetaFieldDef
        elif name == "__type":
            definition = TypeMetaFieldDef
        elif name == "__typename":
            definition = TypeNameMetaFieldDef
        elif isinstance(parent, GraphQLObjectType | GraphQLInterfaceType):
            definition = parent.fields.get(name)
        own = _Measure(cost=1, aliases=1 if node.alias else 0)
        if node.selection_set is None:
            return own  # depth counts the fields that select more (graphql-depth-limit's measure)
        target = get_named_type(definition.type) if definition is not None else None
        inner = self.selection_set(node.selection_set, target)
        factor = self.factor(node, definition)
        own.cost += factor * inner.cost
        own.aliases += inner.aliases
        own.raw_depth = 1 + inner.raw_depth
        own.depth = 0 if introspection else 1 + inner.depth
        return own

    def factor(self, node: FieldNode, definition: object | None) -> int:
        if definition is None:
            return 1
        args = getattr(definition, "args", {}) or {}
        if "first" in args:
            given = next((a.value for a in node.arguments or () if a.name.value == "first"), None)
            if isinstance(given, IntValueNode):
                return max(int(given.value), 1)
            if isinstance(given, VariableNode):
                return self.variable_defaults.get(given.name.value, self.limits.max_page_size)
            default = args["first"].default_value
            return default if isinstance(default, int) and default > 0 else self.limits.max_page_size
        kind = definition.type  # type: ignore[attr-defined]
        if isinstance(kind, GraphQLNonNull):
            kind = kind.of_type
        if isinstance(kind, GraphQLList) and node.name.value != "nodes":
            return LIST_FACTOR
        return 1


def _variable_defaults(operation: OperationDefinitionNode) -> dict[str, int]:
    defaults = {}
    for definition in operation.variable_definitions or ():
        if isinstance(definition.default_value, IntValueNode):
            defaults[definition.variable.name.value] = max(int(definition.default_value.value), 1)
    return defaults


def complexity_rule(limits: Limits) -> type[ValidationRule]:
    """Depth, aliases and cost of each operation in the document."""

    class ComplexityRule(ValidationRule):
        def __init__(self, context: ValidationContext):
            super().__init__(context)
            document = context.document
            fragments = {d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)}
            schema = context.schema
            for operation in document.definitions:
                if not isinstance(operation, OperationDefinitionNode):
                    continue
                root = schema.get_root_type(operation.operation)
                walker = _Walker(schema, limits, fragments, _variable_defaults(operation))
                measure = walker.selection_set(operation.selection_set, root)
                for error in _check(measure, limits, operation.name.value if operation.name else "operation"):
                    context.report_error(error)

    return ComplexityRule


def _check(measure: _Measure, limits: Limits, name: str) -> Iterator[GraphQLError]:
    """The first limit the operation breaks (one clear error, not a list of them)."""
    if measure.depth > limits.max_depth:
        yield too_complex(f"'{name}' exceeds maximum operation depth of {limits.max_depth} (MAX_QUERY_DEPTH)")
    elif measure.raw_depth > max(INTROSPECTION_DEPTH, limits.max_depth):
        yield too_complex(f"'{name}' nests introspection deeper than {INTROSPECTION_DEPTH} levels")
    elif measure.aliases > limits.max_aliases:
        yield too_complex(
            f"{measure.aliases} aliases found. Allowed: {limits.max_aliases} (MAX_ALIASES); ask for fewer copies"
        )
    elif measure.cost > limits.max_cost:
        yield too_complex(
            f"'{name}' would cost {measure.cost}, over the limit of {limits.max_cost} (MAX_QUERY_COST): each field "
            f"costs 1 and `first` multiplies what it selects; ask for smaller pages or fewer fields"
        )


def directives_rule(max_directives: int) -> type[ValidationRule]:
    """At most MAX_DIRECTIVES directives in a document, and no field repeated many times
    over in one selection set (field duplication: the same work asked for again and again)."""

    class DirectivesRule(ValidationRule):
        def __init__(self, context: ValidationContext):
            super().__init__(context)
            self.directives = 0
            self.reported = False

        def enter_directive(self, node: DirectiveNode, *_: object) -> None:
            self.directives += 1
            if self.directives > max_directives and not self.reported:
                self.reported = True
                self.report_error(
                    too_complex(f"the document uses more than {max_directives} directives (MAX_DIRECTIVES)")
                )

        def enter_selection_set(self, node: SelectionSetNode, *_: object) -> None:
            keys = Counter(
                (s.alias or s.name).value for s in node.selections if isinstance(s, FieldNode) and s.alias is None
            )
            repeated = [key for key, count in keys.items() if count > MAX_FIELD_REPEATS]
            if repeated:
                self.report_error(
                    too_complex(
                        f"field {repeated[0]!r} is selected {keys[repeated[0]]} times in one selection set; "
                        f"at most {MAX_FIELD_REPEATS}"
                    )
                )

    return DirectivesRule
