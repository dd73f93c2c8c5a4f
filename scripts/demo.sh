#!/usr/bin/env bash
# Set everything up on a fresh machine and run the whole pipeline on the built-in demo data.
# Usage: bash scripts/demo.sh            (re-running is cheap: installs are skipped, dvc skips stages)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
ccvs repro "$@"     # dvc repro, every stage nested under one MLflow run
echo
echo "Done. Metrics:   dvc metrics show"
echo "Runs:            ccvs ui   (mlflow ui on 127.0.0.1; open the URL it prints)"
