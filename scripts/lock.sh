#!/usr/bin/env bash
# Refresh the lock files from pyproject.toml's bounds: the newest versions that satisfy them,
# with hashes, for Python 3.11 on every platform. Run it when pyproject.toml's dependencies
# change and on the first working day of each month; then run the tests (bash .ci/run) and
# commit pyproject.toml, requirements.lock and requirements-dev.lock together.
#   scripts/lock.sh            # upgrade everything within the bounds
#   scripts/lock.sh --keep     # only add or drop what pyproject.toml changed
set -euo pipefail
cd "$(dirname "$0")/.."

upgrade=(--upgrade)
if [ "${1:-}" = "--keep" ]; then
  upgrade=()
fi
python -m pip install --quiet 'uv>=0.5,<1'
options=(--generate-hashes --universal --python-version 3.11 --quiet --custom-compile-command scripts/lock.sh)
python -m uv pip compile pyproject.toml "${options[@]}" "${upgrade[@]}" -o requirements.lock
python -m uv pip compile pyproject.toml --extra dev "${options[@]}" "${upgrade[@]}" -o requirements-dev.lock
echo "requirements.lock and requirements-dev.lock refreshed; now run: bash .ci/run"
