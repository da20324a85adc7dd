#!/usr/bin/env bash
# The main job: set up, build, and run Korvet's quick start — `korvet up` starts the
# platform on this machine with a demo cluster (1 master, 2 nodes), writes its kubeconfig
# and prints what to try next. Ctrl-C stops it; running this again resumes the same
# cluster. Arguments go to `korvet up`.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
cargo build --release --locked -p korvet
as_root ./target/release/korvet up "$@"
