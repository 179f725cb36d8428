#!/usr/bin/env bash
# Coverage-guided fuzzing of tessera's parsers of untrusted bytes with AFL++ (through cargo-afl,
# on stable Rust). Not part of CI's test run.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET ...]
#
# Targets (fuzz/src/lib.rs): onnx (importer + both engines), frame (frame decoder), evidence
# (evidence container, SNP reports, SGX/TDX quotes, simulated evidence, and their verification),
# ima (IMA logs, binary and ASCII, and Keylime runtime policies), material (garbled-material
# stream reader and label messages). Default: every target, 600 s each, one after another.
# Seeds come from the project's own writers and, when present, ../shared/data. Findings land in
# fuzz/out/TARGET/default/{crashes,hangs}; a summary of each run is printed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh

secs=${1:-600}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(onnx frame evidence ima material)

if ! command -v cargo-afl >/dev/null 2>&1; then
  echo "fuzz: installing cargo-afl (builds AFL++ for this toolchain)"
  cargo install cargo-afl --locked
fi
cargo afl config --build >/dev/null 2>&1 || true

cd fuzz
cargo afl build --release --locked
seeds=out/seeds-$$
rm -rf "$seeds"
shared=""
[ -d ../../shared/data ] && shared=../../shared/data
target/release/seeds "$seeds" $shared

for t in "${targets[@]}"; do
  [ -d "$seeds/$t" ] || { echo "fuzz: unknown target '$t'" >&2; exit 2; }
  echo "fuzz: $t for ${secs}s"
  # No UI, no CPU-governor or core-pattern demands (a VM or container cannot change them);
  # -t: an input that takes over 1 s is a hang. One rayon thread: coverage stays stable and
  # two targets can share two cores.
  AFL_NO_UI=1 AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 \
    AFL_NO_AFFINITY=1 AFL_AUTORESUME=1 RAYON_NUM_THREADS=1 \
    cargo afl fuzz -V "$secs" -t 1000 -m none -i "$seeds/$t" -o "out/$t" "target/release/$t" \
    >"out/$t.log" 2>&1 || { echo "fuzz: afl-fuzz failed on $t (see fuzz/out/$t.log)" >&2; exit 1; }
done

printf '\n%-10s %10s %12s %10s %8s %8s %8s\n' target seconds execs execs/s edges crashes hangs
for t in "${targets[@]}"; do
  s="out/$t/default/fuzzer_stats"
  v() { awk -F' *: *' -v k="$1" '$1 == k { print $2 }' "$s"; }
  printf '%-10s %10s %12s %10s %8s %8s %8s\n' "$t" "$(v run_time)" "$(v execs_done)" \
    "$(v execs_per_sec)" "$(v edges_found)" "$(v saved_crashes)" "$(v saved_hangs)"
done
