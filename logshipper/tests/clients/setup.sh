#!/usr/bin/env bash
# Installs the real Fluent Forward clients the logshipper tests drive: the Node package
# @fluent-org/logger (into this directory) and the Python package fluent-logger.
set -euo pipefail
cd "$(dirname "$0")"
command -v node >/dev/null || { echo "setup: node is required for the forward client tests" >&2; exit 1; }
if [ ! -d node_modules/@fluent-org/logger ]; then
  npm install --no-audit --no-fund --silent
fi
if ! python3 -c "import fluent.sender" 2>/dev/null; then
  python3 -m pip install --quiet fluent-logger
fi
