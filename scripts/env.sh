# Sourced by scripts/demo.sh and scripts/test.sh: create .venv if needed, install the project into
# it (only when pyproject.toml changed since the last install), and set offline-safe defaults.
_root="$(pwd)"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv || return 1
fi
# shellcheck disable=SC1091
source .venv/bin/activate || return 1
_stamp=.venv/.ccvs-installed
if [ ! -f "$_stamp" ] || [ pyproject.toml -nt "$_stamp" ]; then
  python -m pip install --quiet --upgrade pip || return 1
  # torch>=2.3,<2.14 in pyproject.toml keeps pip on the CPU wheel where one is available.
  python -m pip install --quiet -e '.[dev]' || return 1
  touch "$_stamp"
fi
export MLFLOW_DISABLE_TELEMETRY=true
export PREFECT_SERVER_ANALYTICS_ENABLED=false
export DO_NOT_TRACK=1
export PYTHONPATH="$_root${PYTHONPATH:+:$PYTHONPATH}"
if [ -d .dvc ]; then dvc config --local core.analytics false >/dev/null 2>&1 || true; fi
