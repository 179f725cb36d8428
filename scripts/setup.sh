#!/usr/bin/env bash
# Installs what tessera needs on a fresh Debian machine (run as root for apt-get).
# Sourced by demo.sh and test.sh; safe to run again (only missing packages are installed).
set -euo pipefail

# Debian packages the build or the tests need: a C compiler and pkg-config for -sys crates, the TSS2
# libraries for tss-esapi, a software TPM (swtpm) plus tpm2-tools for the attested scheme, and a
# TrueType font for the text of the charts `compare`, `characterize` and `demo` draw, and the NATS
# server (JetStream) that scale-out dispatch and its tests use.
APT_PACKAGES=(gcc pkg-config libtss2-dev swtpm swtpm-tools tpm2-tools fonts-dejavu-core nats-server)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "tessera setup: missing Debian packages ${missing[*]}; run this script as root so it can apt-get install them" >&2
    exit 1
  fi
  echo "tessera setup: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "tessera setup: cargo not found; install a stable Rust toolchain (1.95 or newer) first" >&2
  exit 1
fi
