#!/usr/bin/env bash
# Sets up and runs every check: formatting, lints, unit and integration tests against real
# etcd.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --locked --workspace --all-targets -- -D warnings
cargo test --locked --workspace --no-fail-fast
