#!/usr/bin/env bash
# Sets up and runs every check: formatting, lints, unit and integration tests against real
# etcd.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
if ! command -v kubectl >/dev/null 2>&1; then
  echo "test: kubectl is missing; the tests use it as their oracle. Install kubectl 1.30 or newer (Debian 12 does not package it: https://kubernetes.io/docs/tasks/tools/install-kubectl-linux/) and run this again" >&2
  exit 1
fi
# A fresh build gains nothing from incremental compilation, whose caches would add
# about 11 GB to the build output (and a full disk makes every node report DiskPressure).
export CARGO_INCREMENTAL=0
cargo fmt --all -- --check
cargo clippy --locked --workspace --all-targets -- -D warnings
cargo test --locked --workspace --no-fail-fast
