#!/usr/bin/env bash
# Installs what Korvet needs on Debian 12, idempotently. Safe to run again and again.
set -euo pipefail

# Debian packages: the real parts Korvet builds and tests against.
PACKAGES=(
  etcd-server          # the distributed store, and the reference in `korvet bench store`
  protobuf-compiler    # protoc, for the etcd and CRI gRPC clients
  libprotobuf-dev      # the well-known .proto files (descriptor.proto, struct.proto) protoc imports
  build-essential pkg-config
  ca-certificates
  python3 python3-venv # the official Python client runs in a virtualenv in the tests
  iproute2             # network namespaces, bridges and veths of the local provider
  containerd runc      # each machine's own container runtime
  crun                 # the second OCI runtime, RuntimeClass handler `crun`
  containernetworking-plugins # CNI plugins (bridge, host-local, portmap, loopback) for pods
  nftables
  skopeo               # OCI interop oracle of the registry tests
  docker-registry      # the reference registry in `korvet bench pods`
  busybox-static       # /bin/busybox, the base of the busybox, pause and demo-web images
  haproxy keepalived   # the references of `korvet bench lb` (Octavia's amphora: haproxy + keepalived)
  nginx-light          # the reference of the Ingress figures in `korvet bench lb`
  procps curl          # kill and curl, which the end-to-end tests run (a minimal Debian lacks them)
)

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

missing=()
for pkg in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}" >&2
  as_root apt-get update -qq
  # Without systemd, packages start their daemons through invoke-rc.d (nginx on port 80,
  # etcd on 2379 of the host); Korvet runs its own instances, so none may start.
  policy=/usr/sbin/policy-rc.d
  made_policy=0
  if [ ! -d /run/systemd/system ] && [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | as_root tee "$policy" >/dev/null
    as_root chmod 755 "$policy"
    made_policy=1
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  if [ "$made_policy" -eq 1 ]; then as_root rm -f "$policy"; fi
  # Debian starts etcd and docker-registry as services on install (the registry on every
  # interface); Korvet runs its own instances of both, so the ones installed here stop.
  if [ -d /run/systemd/system ]; then
    for pkg in "${missing[@]}"; do
      case "$pkg" in
        etcd-server) as_root systemctl disable --now etcd >/dev/null 2>&1 || true ;;
        docker-registry) as_root systemctl disable --now docker-registry >/dev/null 2>&1 || true ;;
        haproxy|keepalived|nginx-light) as_root systemctl disable --now "${pkg%-light}" >/dev/null 2>&1 || true ;;
      esac
    done
  fi
fi

# crun refuses the hybrid cgroup layout (v1 hierarchies plus `unified`) while the v2
# hierarchy still holds a controller (often hugetlb, when nothing mounted it as v1):
# mount each such controller as its own v1 hierarchy, as systemd does on hybrid hosts.
unified=/sys/fs/cgroup/unified
if [ -f "$unified/cgroup.controllers" ] && [ ! -f /sys/fs/cgroup/cgroup.controllers ]; then
  for controller in $(cat "$unified/cgroup.controllers"); do
    echo "setup: mounting the $controller cgroup controller as a v1 hierarchy (for crun)" >&2
    as_root mkdir -p "/sys/fs/cgroup/$controller"
    as_root mount -t cgroup -o "$controller" cgroup "/sys/fs/cgroup/$controller"
  done
fi

if ! command -v cargo >/dev/null 2>&1; then
  for dir in "$HOME/.cargo/bin" /root/.cargo/bin; do
    [ -x "$dir/cargo" ] && export PATH="$dir:$PATH" && break
  done
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: no Rust toolchain found: install Rust 1.90 or newer (https://rustup.rs) and run this again" >&2
  exit 1
fi
