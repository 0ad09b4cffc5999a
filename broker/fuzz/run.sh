#!/usr/bin/env bash
# Bounded fuzz run of whole STOMP sessions against the broker: ./run.sh [SECONDS] (default 60).
# See tests/fuzz.sh.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
exec "$here/../../tests/fuzz.sh" "$here" session "${1:-60}" -timeout=10
