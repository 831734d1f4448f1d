"""Logging for the service's own loggers, uvicorn's and Alembic's: one handler on the root
logger, text for people or JSON lines for log collectors (LOG_FORMAT), at LOG_LEVEL.

Lines written while a GraphQL operation runs carry its request id (a context variable), so
an error's traceback can be matched with the request that caused it.
"""

from __future__ import annotations

import logging
import sys
import time
from contextvars import ContextVar
from typing import Any

from pythonjsonlogger.json import JsonFormatter

request_id: ContextVar[str | None] = ContextVar("request_id", default=None)
requests_log = logging.getLogger("task_service.requests")

TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
# Loggers that install their own handlers or levels; they are made to use ours.
_ADOPTED = ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi")


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = request_id.get()
        return True


class _GraphQLAccessFilter(logging.Filter):
    """Drops uvicorn's access line of a POST to the GraphQL endpoint answered 200: the
    request log's line for each of its operations (log_request) says more (operation,
    outcome, caller, duration), so such a request wrote two lines. Every other access line
    stays: other routes, GET, and any status but 200 (refused before GraphQL ran: 401,
    413, 429...)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        # uvicorn's format: '%s - "%s %s HTTP/%s" %d' % (client, method, path, version, status)
        if type(args) is tuple and len(args) == 5 and args[4] == 200 and args[1] == "POST":
            path = args[2]
            return not (isinstance(path, str) and path.partition("?")[0].endswith("/graphql"))
        return True


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """Ours, so configuring again replaces it and leaves other handlers (pytest's) alone."""


class TextFormatter(logging.Formatter):
    """TEXT_FORMAT, with the time of day formatted once per second: `time.strftime` for
    every line was a sixth of a request log line's cost (bench/PROFILE.md, seventh round)."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)
        self._second = -1
        self._stamp = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        second = int(record.created)
        if second != self._second:
            self._stamp = time.strftime(self.default_time_format, self.converter(second))
            self._second = second
        return f"{self._stamp},{int(record.msecs):03d}"  # logging's default_msec_format, "%s,%03d"


def json_formatter() -> logging.Formatter:
    return JsonFormatter(
        "%(levelname)s %(name)s %(message)s",
        rename_fields={"levelname": "level", "name": "logger"},
        timestamp=True,
    )


def configure_logging(level: str, log_format: str) -> None:
    """Send every logger's records at `level` or above to stderr as text or JSON lines.

    SQLAlchemy's statement echo stays off (it logs every SQL statement at INFO), and so does
    Alembic's narration below WARNING.

    Records do not look up the calling function, thread or process: no format shows them,
    and at a line or two per request (the request log, uvicorn's access log) the lookups cost
    a quarter of the logging (the logging HOWTO's "Optimization").
    """
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = _Handler(sys.stderr)
    handler.setFormatter(json_formatter() if log_format == "json" else TextFormatter())
    handler.addFilter(_RequestIdFilter())
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for name in _ADOPTED:
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
        logger.setLevel(logging.NOTSET)
    access = logging.getLogger("uvicorn.access")
    for old_filter in [f for f in access.filters if isinstance(f, _GraphQLAccessFilter)]:
        access.removeFilter(old_filter)
    access.addFilter(_GraphQLAccessFilter())
    quiet = max(logging.WARNING, logging.getLevelName(level))
    logging.getLogger("sqlalchemy.engine").setLevel(quiet)
    # Alembic narrates every step at INFO; `task-service migrate` prints its own result line.
    logging.getLogger("alembic").setLevel(quiet)


def log_request(
    *,
    operation: str | None,
    operation_type: str,
    caller: str,
    outcome: str,
    duration_ms: float,
    client: str | None,
) -> None:
    """One line per GraphQL operation (a subscription's when it ends)."""
    fields: dict[str, Any] = {
        "operation": operation,
        "operation_type": operation_type,
        "caller": caller,
        "outcome": outcome,
        "duration_ms": round(duration_ms, 2),
        "client": client,
    }
    requests_log.info(
        "%s %s: %s in %.1f ms (caller %s, client %s)",
        operation_type,
        operation or "(anonymous)",
        outcome,
        duration_ms,
        caller,
        client or "-",
        extra=fields,
    )


class FailureLog:
    """A background loop's failures, logged once per change of state instead of once per
    retry: a database outage is one warning when it starts and one line when it ends.

    `failed(reason)` is for the expected states (database unreachable, not migrated);
    `failed(None, exc)` for anything else, logged with its traceback once per exception type.
    """

    def __init__(self, logger: logging.Logger, what: str):
        self._log = logger
        self._what = what
        self.state: str | None = None

    def failed(self, reason: str | None, exc: BaseException | None = None) -> None:
        state = reason or type(exc).__name__
        if state == self.state:
            return
        self.state = state
        if reason is not None:
            self._log.warning("%s paused: %s; retrying quietly until it recovers", self._what, reason)
        else:
            self._log.error("%s failed; retrying quietly until it recovers", self._what, exc_info=exc)

    def ok(self) -> None:
        if self.state is not None:
            self._log.info("%s recovered (after: %s)", self._what, self.state)
            self.state = None
