#!/usr/bin/env bash
# Set everything up on a fresh machine and run the test suite (what CI runs).
# Usage: bash scripts/test.sh [pytest args]
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
source scripts/env.sh || exit 1
python -m pytest -q "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: treating as a failure" >&2
  exit 1
fi
exit "$rc"
