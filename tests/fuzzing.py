"""What the fuzzers share: the contract codes an error may carry, and whether they draw the
same cases every run. By default they do (a fixed seed per test), so that a CI run cannot
fail on a case no earlier run drew: a fuzzer that finds a new bug at random is a flaky test.
`FUZZ_RANDOM=1` draws new cases each run, to explore (run it by hand or on a schedule, and
fix what it finds with a regression test)."""

from __future__ import annotations

import os

from task_service.errors import ErrorCode

# Every contract code but INTERNAL: what a fuzzed error may carry.
CODES = frozenset(code.value for code in ErrorCode if code is not ErrorCode.INTERNAL)

DERANDOMIZE = os.environ.get("FUZZ_RANDOM", "") not in {"1", "true", "yes"}
