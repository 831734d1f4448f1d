"""The `taskctl` console script."""

from __future__ import annotations

import sys


def main() -> None:
    try:
        from .app import main as run
    except ModuleNotFoundError as exc:
        # The server's own install declares taskctl too; its client libraries come with
        # the dev extra or with `pip install ./client`.
        print(
            f"BAD_INSTALL: taskctl needs {exc.name!r}; install the client: pip install ./client "
            "(or pip install -e '.[dev]' in the service's repository)",
            file=sys.stderr,
        )
        raise SystemExit(1) from None
    raise SystemExit(run())
