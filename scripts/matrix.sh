#!/usr/bin/env bash
# Set up the reference environment (idempotent) and run the default matrix.
# Extra arguments go to `harness run`, e.g. scripts/matrix.sh --dtype float64
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/harness run "$@"
