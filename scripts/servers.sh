#!/usr/bin/env bash
# Servers the tests talk to, on loopback only, each stopped by pid when the calling script exits.
# Sourced by test.sh after setup.sh. Binaries built from the crates registry are cached in
# TESSERA_TOOLS (default ~/.cache/tessera/tools) so later runs start at once.
set -euo pipefail

TESSERA_TOOLS=${TESSERA_TOOLS:-$HOME/.cache/tessera/tools}
SERVER_PIDS=()
SERVER_DIRS=()

stop_servers() {
  for pid in "${SERVER_PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  for d in "${SERVER_DIRS[@]}"; do
    rm -rf "$d"
  done
}

# A free loopback TCP port (bash's /dev/tcp: a port nobody answers on).
free_port() {
  local p
  for _ in $(seq 1 50); do
    p=$((20000 + RANDOM % 20000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      echo "$p"
      return 0
    fi
  done
  echo "tessera servers: no free loopback port found" >&2
  return 1
}

# Wait until something listens on 127.0.0.1:$1 (up to 30 s).
wait_port() {
  for _ in $(seq 1 300); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then
      return 0
    fi
    sleep 0.1
  done
  echo "tessera servers: nothing listens on 127.0.0.1:$1 after 30 s" >&2
  return 1
}

# An S3-compatible server (s3s-fs, the s3s project's S3 API over a directory) on loopback with
# fresh credentials and one bucket; exports the AWS_* variables and TESSERA_TEST_S3 for the tests.
start_s3() {
  local bin="$TESSERA_TOOLS/bin/s3s-fs"
  if [ ! -x "$bin" ]; then
    echo "tessera servers: building the S3 server s3s-fs into $TESSERA_TOOLS (once, about 2 minutes)"
    cargo install --locked --quiet s3s-fs@0.14.1 --features binary --root "$TESSERA_TOOLS"
  fi
  local root port key secret
  root=$(mktemp -d)
  SERVER_DIRS+=("$root")
  mkdir -p "$root/tessera-test"
  port=$(free_port)
  key="tessera$RANDOM$RANDOM"
  secret=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
  "$bin" --host 127.0.0.1 --port "$port" --access-key "$key" --secret-key "$secret" "$root" \
    >"$root.log" 2>&1 &
  SERVER_PIDS+=("$!")
  SERVER_DIRS+=("$root.log")
  wait_port "$port"
  export AWS_ACCESS_KEY_ID="$key" AWS_SECRET_ACCESS_KEY="$secret" AWS_DEFAULT_REGION=us-east-1
  export AWS_ENDPOINT="http://127.0.0.1:$port" AWS_ALLOW_HTTP=true
  export TESSERA_TEST_S3="s3://tessera-test/run" TESSERA_S3S_BIN="$bin"
  echo "tessera servers: S3 (s3s-fs) on 127.0.0.1:$port, pid ${SERVER_PIDS[-1]}"
}

# A NATS server with JetStream (Debian's nats-server) on loopback with a fresh store directory;
# exports TESSERA_TEST_NATS for the tests.
start_nats() {
  local dir port
  dir=$(mktemp -d)
  SERVER_DIRS+=("$dir")
  port=$(free_port)
  nats-server -js -a 127.0.0.1 -p "$port" -sd "$dir" >"$dir.log" 2>&1 &
  SERVER_PIDS+=("$!")
  SERVER_DIRS+=("$dir.log")
  wait_port "$port"
  export TESSERA_TEST_NATS="nats://127.0.0.1:$port"
  echo "tessera servers: NATS JetStream on 127.0.0.1:$port, pid ${SERVER_PIDS[-1]}"
}
