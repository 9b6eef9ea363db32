#!/usr/bin/env bash
# Runs every test of the workspace: unit, integration (Docker and containerd
# ones included: they skip loudly when no engine is reachable, and fail under
# CI=true), doc tests, and builds every example.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup-deps.sh
cargo test --workspace --all-features "$@"
