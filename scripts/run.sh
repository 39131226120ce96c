#!/usr/bin/env bash
# Sets up the environment (scripts/setup.sh), then runs the attnprune demo.
# Arguments go to `python -m attnprune.demo`; its exit code is returned.
#   bash scripts/run.sh --help
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
exec .venv/bin/python -m attnprune.demo "$@"
