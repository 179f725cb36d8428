#!/usr/bin/env bash
# The main job: builds tessera in release mode and runs `tessera demo` (extra arguments are passed on).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
cargo build --release --locked -q -p tessera-cli
exec ./target/release/tessera demo "$@"
