#!/usr/bin/env bash
# The main job: set up, build, and run Korvet's demo. Until `korvet up` exists, the demo
# is the store benchmark against real etcd.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
cargo build --release --locked -p korvet
exec ./target/release/korvet bench store "$@"
