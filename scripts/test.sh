#!/usr/bin/env bash
# The test suite, exactly as CI runs it: formatting, lints, then every test of the workspace.
# Tests that read ../shared/data skip with a reason when it is absent, and fail when CI is set.
# Servers the tests need (scripts/servers.sh) are started on loopback and stopped by pid at exit.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --locked --all-targets -q -- -D warnings
# The GPU path must keep compiling on machines without CUDA (cudarc loads it at run time).
cargo clippy --locked -p tessera-cuda -p tessera-cli --features tessera-cli/cuda --all-targets -q -- -D warnings
source scripts/servers.sh
log=$(mktemp)
trap 'rm -f "$log"; stop_servers' EXIT
start_s3
start_nats
set +e
cargo test --locked --workspace --all-targets 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One closing line over all test binaries.
awk '/^test result:/ { p += $4; f += $6; i += $8 } END { printf "summary: %d passed, %d failed, %d skipped\n", p, f, i }' "$log"
exit "$status"
