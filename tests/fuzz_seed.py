"""Whether the fuzzers draw the same cases every run. By default they do (a fixed seed per
test), so that a CI run cannot fail on a case no earlier run drew: a fuzzer that finds a new
bug at random is a flaky test. `FUZZ_RANDOM=1` draws new cases each run, to explore (run it
by hand or on a schedule, and fix what it finds with a regression test)."""

from __future__ import annotations

import os

DERANDOMIZE = os.environ.get("FUZZ_RANDOM", "") not in {"1", "true", "yes"}
