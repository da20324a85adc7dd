#!/usr/bin/env bash
# Runs the README's two commands on a fresh Debian 12: a new root filesystem made with
# debootstrap from the mirror this host's apt uses, with only the Rust toolchain (and
# kubectl, which Debian does not package) brought in from the host. It is the one check
# that catches a missing install step, because the host has every package some earlier
# run installed by hand. Not part of CI (it takes about an hour); run it after changing
# the build or scripts/.
#
#   scripts/fresh-check.sh            # both commands: run.sh until the demo cluster is up, then test.sh
#   scripts/fresh-check.sh --run      # only the quick start
#   scripts/fresh-check.sh --test     # only the tests
#   FRESH_DIR=/big/disk scripts/fresh-check.sh --keep   # where the root goes; keep it afterwards
#
# The copy of the checkout holds what `git add -A` would commit (tracked and untracked
# files, not ignored ones). Runs as root. The host's /tmp and /run/korvet are shared
# with the new root so that test platforms on either side see each other's network
# claims; still, do not run `korvet up` on the host meanwhile.
set -euo pipefail
cd "$(dirname "$0")/.."
checkout=$(pwd)

run=1
test=1
keep=0
for arg in "$@"; do
  case "$arg" in
    --run) test=0 ;;
    --test) run=0 ;;
    --keep) keep=1 ;;
    *) echo "fresh-check: unknown argument $arg (--run, --test, --keep)" >&2; exit 2 ;;
  esac
done
if [ "$(id -u)" -ne 0 ]; then
  echo "fresh-check: run as root (it makes a root filesystem and mounts into it)" >&2
  exit 1
fi
if [ -z "${FRESH_IN_NAMESPACE:-}" ]; then
  # Every mount below lives in a mount namespace of its own, gone with this script
  # however it ends.
  exec env FRESH_IN_NAMESPACE=1 unshare --mount --propagation private -- "$0" "$@"
fi

started=$(date +%s)
elapsed() { echo $(( $(date +%s) - started )); }
say() { echo "fresh-check [$(elapsed) s]: $*" >&2; }

command -v debootstrap >/dev/null || {
  say "installing debootstrap"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
}

# The mirror apt uses here: the first deb URI of the sources (deb822 or one-line form).
mirror=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '/^URIs:/ {print $2; exit}')
[ -n "$mirror" ] || mirror=$(awk '$1 == "deb" {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
[ -n "$mirror" ] || { say "cannot tell which mirror apt uses"; exit 1; }

base=${FRESH_DIR:-/var/tmp}
root=$(mktemp -d "$base/korvet-fresh.XXXXXX")
cleanup() {
  local status=$?
  if [ -n "${demo_pgid:-}" ]; then
    kill -INT -- "-$demo_pgid" 2>/dev/null || true
    for _ in $(seq 60); do kill -0 "$demo_pid" 2>/dev/null || break; sleep 1; done
  fi
  umount -R "$root" 2>/dev/null || true
  # The logs outlive the root filesystem.
  for name in run.log test.log; do
    if [ -f "$root/$name" ]; then cp "$root/$name" "$root.$name" && say "kept $root.$name"; fi
  done
  # Never delete through a mount: the host's toolchain and /tmp are bound in there.
  if grep -q " $root[/ ]" /proc/self/mountinfo; then
    say "mounts remain under $root; not deleting it (unmount them, then remove it)"
  elif [ "$keep" -eq 0 ]; then
    rm -rf --one-file-system "$root"
  else
    say "kept the root filesystem in $root"
  fi
  exit $status
}
trap cleanup EXIT

say "debootstrap bookworm from $mirror into $root"
debootstrap --variant=minbase bookworm "$root" "$mirror" >"$root.debootstrap.log" 2>&1 || {
  tail -20 "$root.debootstrap.log" >&2
  exit 1
}
rm -f "$root.debootstrap.log"
cp -a /etc/apt/sources.list "$root/etc/apt/" 2>/dev/null || true
rm -f "$root"/etc/apt/sources.list.d/*
cp -a /etc/apt/sources.list.d/. "$root/etc/apt/sources.list.d/" 2>/dev/null || true
cp /etc/resolv.conf "$root/etc/resolv.conf"
# The machine's own certificate authorities (an egress proxy's, say) are part of the
# machine, not of Korvet's install: Debian's ca-certificates adds them to its bundle.
if [ -d /usr/local/share/ca-certificates ]; then
  mkdir -p "$root/usr/local/share/ca-certificates"
  cp -a /usr/local/share/ca-certificates/. "$root/usr/local/share/ca-certificates/"
fi

# The new root is a mount point of its own: `ip netns exec` remounts "/" as a slave,
# and everything below goes with one `umount -R`.
mount --bind "$root" "$root"
mount -t proc proc "$root/proc"
mount --rbind /sys "$root/sys"
mount --rbind /dev "$root/dev"
mount -t tmpfs tmpfs "$root/run"
mkdir -p /run/korvet "$root/run/korvet"
mount --bind /run/korvet "$root/run/korvet"
mount --bind /tmp "$root/tmp"
# What the machine gives besides Debian: the Rust toolchain (read-only; crates are
# fetched into a CARGO_HOME of the new root's own) and kubectl.
for dir in "$HOME/.cargo" "$HOME/.rustup"; do
  mkdir -p "$root$dir"
  mount --bind "$dir" "$root$dir"
  mount -o remount,bind,ro "$root$dir"
done
kubectl=$(readlink -f "$(command -v kubectl)" 2>/dev/null || true)
if [ -n "$kubectl" ]; then
  kubectl_dir=$(dirname "$kubectl")
  mkdir -p "$root$kubectl_dir"
  mount --bind -o ro "$kubectl_dir" "$root$kubectl_dir"
  ln -sf "$kubectl" "$root/usr/local/bin/kubectl"
else
  say "no kubectl on this host: the tests will say so"
fi

say "copying the checkout (what git add -A would commit)"
mkdir -p "$root/src/korvet"
git -C "$checkout" ls-files -z --cached --others --exclude-standard |
  tar -C "$checkout" --null -T - -cf - | tar -C "$root/src/korvet" -xf -

in_root() {
  chroot "$root" /usr/bin/env -i HOME="$HOME" TERM=dumb LANG=C.UTF-8 \
    CARGO_HOME=/var/cache/cargo RUSTUP_HOME="$HOME/.rustup" \
    PATH="$HOME/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    /bin/bash -c "cd /src/korvet && $1"
}

if [ "$run" -eq 1 ]; then
  say "./scripts/run.sh, until the demo cluster is up"
  log="$root/run.log"
  run_started=$(date +%s)
  setsid bash -c "$(declare -f in_root); root=$root HOME=$HOME; in_root ./scripts/run.sh" >"$log" 2>&1 &
  demo_pid=$!
  demo_pgid=$demo_pid
  built=""
  while ! grep -q "cluster demo is running" "$log"; do
    if [ -z "$built" ] && grep -q "Finished .release" "$log"; then
      built=$(( $(date +%s) - run_started ))
      say "release build finished after $built s"
    fi
    if ! kill -0 "$demo_pid" 2>/dev/null; then
      tail -40 "$log" >&2
      say "FAILED: ./scripts/run.sh ended before the demo cluster was up"
      exit 1
    fi
    if [ $(( $(date +%s) - run_started )) -gt 5400 ]; then
      tail -40 "$log" >&2
      say "FAILED: no demo cluster within 90 minutes"
      exit 1
    fi
    sleep 5
  done
  up=$(( $(date +%s) - run_started ))
  say "demo cluster up after $up s (build ${built:-?} s, then $(( up - ${built:-0} )) s to the running cluster)"
  sed -n '/cluster demo is running/,$p' "$log" >&2
  kill -INT -- "-$demo_pgid"
  for _ in $(seq 120); do kill -0 "$demo_pid" 2>/dev/null || break; sleep 1; done
  if kill -0 "$demo_pid" 2>/dev/null; then
    say "FAILED: korvet up did not stop within 2 minutes of Ctrl-C"
    exit 1
  fi
  demo_pgid=""
  say "korvet up stopped on Ctrl-C"
fi

if [ "$test" -eq 1 ]; then
  say "./scripts/test.sh"
  test_started=$(date +%s)
  if in_root ./scripts/test.sh >"$root/test.log" 2>&1; then
    say "tests passed in $(( $(date +%s) - test_started )) s"
    grep -E '^test result:' "$root/test.log" |
      awk '{p += $4; f += $6; i += $8} END {print "fresh-check: " p " passed, " f " failed, " i " ignored"}' >&2
  else
    grep -E '^(test .* FAILED|error)|panicked at' -A1 "$root/test.log" | head -80 >&2 || true
    tail -40 "$root/test.log" >&2
    say "FAILED: ./scripts/test.sh (after $(( $(date +%s) - test_started )) s)"
    exit 1
  fi
fi
say "passed in $(elapsed) s"
