#!/usr/bin/env bash
# The main job: set up, build, and run Korvet's demo. Until `korvet up` exists, the demo is
# what exists: the store benchmark against real etcd, then the Kubernetes API benchmark
# (kubectl-compatible control planes on both stores). Arguments go to `korvet bench store`.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
cargo build --release --locked -p korvet
./target/release/korvet bench store "$@"
echo
./target/release/korvet bench api
