#!/usr/bin/env bash
# Set everything up on a fresh machine and run the whole pipeline on the built-in demo data.
# Usage: bash scripts/demo.sh            (re-running is cheap: installs are skipped, dvc skips stages)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
dvc repro "$@"
echo
echo "Done. Metrics:   dvc metrics show"
echo "Runs:            mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1  (then open http://127.0.0.1:5000)"
