#!/usr/bin/env bash
# The test suite, exactly as CI runs it: formatting, lints, then every test of the workspace.
# Tests that read ../shared/data skip with a reason when it is absent, and fail when CI is set.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --locked --all-targets -q -- -D warnings
cargo test --locked --workspace
