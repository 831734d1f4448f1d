"""A shared subscription result is encoded to JSON once, however many subscribers it is sent
to; each `next` message is still exactly what Strawberry's own encoder makes of it."""

from __future__ import annotations

import json

from task_service.api.schema import build_schema
from task_service.api.shared_results import SharedPayloads, shared_payloads
from task_service.api.transport import GraphQLApp
from task_service.settings import Settings


def _message(operation_id: str, payload: dict[str, object]) -> dict[str, object]:
    return {"id": operation_id, "type": "next", "payload": payload}


def _plain(message: object) -> str:
    return json.dumps(message, separators=(",", ":"))


def test_a_shared_result_is_encoded_once_for_every_subscriber() -> None:
    settings = Settings(database_url="sqlite+aiosqlite:///:memory:")
    app = GraphQLApp(build_schema(settings), settings=settings)
    data = {"taskEvents": {"id": "7", "type": "CREATED", "message": 'quote " and é'}}
    shared_payloads.register(data)
    before = shared_payloads.encoded_count
    ids = [str(i) for i in range(50)] + ['we"ird']
    for operation_id in ids:
        message = _message(operation_id, {"data": data})
        assert app.encode_json(message) == _plain(message)
    assert shared_payloads.encoded_count - before == 1

    # Anything else is encoded as before, each time: a result nobody shares, a payload with
    # errors, other message types.
    alone = {"taskEvents": {"id": "8"}}
    with_errors = {"data": data, "errors": [{"message": "boom"}]}
    for message in (_message("1", {"data": alone}), _message("1", with_errors), {"type": "ping"}):
        assert app.encode_json(message) == _plain(message)
    assert shared_payloads.encoded_count - before == 1


def test_entries_are_bounded_and_found_by_identity_only() -> None:
    payloads = SharedPayloads(capacity=2)
    first, second, third = {"n": 1}, {"n": 2}, {"n": 3}
    for data in (first, second, third):
        payloads.register(data)
    assert payloads.encoded(first, json.dumps) is None  # dropped: the oldest beyond capacity
    assert payloads.encoded({"n": 3}, json.dumps) is None  # equal, but not the same object
    assert payloads.encoded(third, json.dumps) == '{"data": {"n": 3}}'
