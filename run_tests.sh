#!/usr/bin/env bash
# Runs the project's checks in the venv made by setup.sh: the default test selection
# (everything not marked slow; CUDA tests skip without a GPU), then ruff.
# Usage: ./run_tests.sh [pytest options]     e.g.  ./run_tests.sh -m slow   ./run_tests.sh -x
# Exit status: 0 when both pass, non-zero otherwise (also when pytest collects no tests).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${LANDCOVER_VENV:-$ROOT/.venv}"
cd "$ROOT"
# QGIS tests run headless (pytest-qgis with qgis_gui_enabled = false).
export QT_QPA_PLATFORM="${QT_QPA_PLATFORM:-offscreen}"

"$VENV/bin/python" -m pytest "$@"
tests=$?
if [ "$tests" -eq 5 ]; then
    # pytest's "no tests collected": a selection that matches nothing checks nothing.
    echo "run_tests.sh: pytest collected no tests (exit 5); check the selection" >&2
fi

"$VENV/bin/ruff" check .
lint=$?

if [ "$tests" -ne 0 ] || [ "$lint" -ne 0 ]; then
    echo "run_tests.sh: FAILED (pytest exit $tests, ruff exit $lint)" >&2
    exit 1
fi
echo "run_tests.sh: all checks passed"
