#!/usr/bin/env bash
# Sets up the environment (scripts/setup.sh), then runs the test suite.
# Arguments go to pytest (default: -q); pytest's exit code is returned.
#   bash scripts/test.sh                 # whole suite, quiet
#   bash scripts/test.sh -m "not slow"   # skip slow tests
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
if [ "$#" -eq 0 ]; then
    set -- -q
fi
exec .venv/bin/python -m pytest "$@"
