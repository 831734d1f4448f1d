"""The text log format's time stamp, formatted once per second (observability/logs.py)."""

from __future__ import annotations

import logging

import pytest

from task_service.observability.logs import TEXT_FORMAT, TextFormatter


def record(created: float) -> logging.LogRecord:
    r = logging.LogRecord("task_service.requests", logging.INFO, __file__, 1, "query %s: ok", ("Hello",), None)
    r.created = created
    r.msecs = (created - int(created)) * 1000
    return r


@pytest.mark.parametrize(
    "times",
    [
        [0.0, 0.5, 0.999, 1.0, 1.001],  # a second boundary
        [1_700_000_000.25, 1_700_000_000.75, 1_700_000_001.5, 1_700_000_000.9],  # and back
        [1_800_000_059.998, 1_800_000_060.002, 1_800_003_600.0],  # minute and hour change
    ],
)
def test_the_lines_are_those_of_the_standard_formatter(times: list[float]) -> None:
    ours, standard = TextFormatter(), logging.Formatter(TEXT_FORMAT)
    for t in times:
        assert ours.format(record(t)) == standard.format(record(t))


def test_a_date_format_given_is_used() -> None:
    assert TextFormatter().formatTime(record(0.0), "%Y") == logging.Formatter().formatTime(record(0.0), "%Y")
