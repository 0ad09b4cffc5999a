#!/usr/bin/env bash
# Bounded fuzz run of the decoder: ./run.sh [SECONDS] (default 60). See tests/fuzz.sh.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
exec "$here/../../tests/fuzz.sh" "$here" decode "${1:-60}"
