"""The marker a subscription resolver puts on a payload that renders the same for every
subscriber; api/shared_results.py executes such a payload once per selection for all of them."""

from __future__ import annotations

from collections.abc import Hashable
from typing import TypeVar

T = TypeVar("T")
SHARE_ATTRIBUTE = "_shared_result_key"


def share(payload: T, key: Hashable) -> T:
    """Mark a subscription payload as rendered identically for every subscriber (key: the
    event, e.g. its cursor)."""
    setattr(payload, SHARE_ATTRIBUTE, key)
    return payload
