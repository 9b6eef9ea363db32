#!/usr/bin/env bash
# Runs every test of the workspace: unit, integration (Docker, containerd
# and root ones included), doc tests, and builds every example.
#
# A test that cannot run here (no Docker Engine, no containerd, not root)
# records itself in $SWARM_SKIP_LOG (swarm_conformance::skip); this script
# lists every such test at the end of its output. Under CI (CI=true or
# CI=1) a skip is a failure: the test panics, and any recorded skip makes
# this script exit non-zero.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup-deps.sh

mkdir -p target
export SWARM_SKIP_LOG="$PWD/target/skipped-tests.log"
: > "$SWARM_SKIP_LOG"

status=0
cargo test --workspace --all-features "$@" || status=$?

ci=$(printf '%s' "${CI:-}" | tr '[:upper:]' '[:lower:]')
if [ -s "$SWARM_SKIP_LOG" ]; then
    echo
    echo "==================== SKIPPED TESTS: $(wc -l < "$SWARM_SKIP_LOG") (they did not run) ===================="
    sort "$SWARM_SKIP_LOG" | sed 's/^/SKIPPED /'
    echo "========================================================================================"
    if [ "$ci" = true ] || [ "$ci" = 1 ]; then
        echo "test.sh: tests were skipped under CI=$CI: failing" >&2
        [ "$status" -ne 0 ] || status=1
    fi
else
    echo "test.sh: no test was skipped"
fi
exit "$status"
