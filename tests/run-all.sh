#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit and integration tests, a
# short run of every fuzz target, and the netns harness (real processes
# over namespaced networks).
#
#   tests/run-all.sh            (from anywhere; run as root for the netns part)
#
# It installs the Debian packages the netns harness needs when it can (root
# with apt-get), and otherwise stops with a clear message: no part is ever
# skipped silently.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n== %s\n' "$*"; }
die() { echo "tests/run-all.sh: $*" >&2; exit 2; }

command -v cargo >/dev/null || die "cargo is missing: install the Rust toolchain (rustup) first"
command -v cc >/dev/null || die "a C compiler is missing (Debian: apt-get install build-essential); SQLite is built from source"
command -v c++ >/dev/null || die "a C++ compiler is missing (Debian: apt-get install build-essential); the fuzz targets link libFuzzer, built from source"
[ "$(id -u)" = 0 ] || die "the netns harness needs root (network namespaces, veth, nftables); run as root"

# Debian package providing each command the suite uses: the netns
# harness's tools (Prometheus scrapes the gateway and control plane in
# scenario 21), then those of the C ABI's tests (ffi/tests/c_abi.rs:
# memcheck, a real player, the Python binding), then the browser the web
# console's end-to-end test drives (hushgate/tests/console_browser.rs).
declare -A PKG=(
  [ip]=iproute2 [nft]=nftables [tcpdump]=tcpdump [wg]=wireguard-tools
  [wireguard-go]=wireguard-go [nmap]=nmap [conntrack]=conntrack [curl]=curl
  [python3]=python3 [sysctl]=procps [miniupnpd]=miniupnpd-nftables [prometheus]=prometheus
  [adduser]=adduser
  [valgrind]=valgrind [ffmpeg]=ffmpeg [ffprobe]=ffmpeg
  [chromium]=chromium [chromedriver]=chromium-driver
)
missing=()
for cmd in "${!PKG[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${PKG[$cmd]}")
done
if [ "${#missing[@]}" -gt 0 ]; then
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  command -v apt-get >/dev/null || die "missing packages: ${missing[*]} (and no apt-get to install them)"
  say "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# The control plane's tests run it on PostgreSQL too: they start their
# own server (initdb in a temporary folder, a Unix socket) from Debian's
# programs, which are not on PATH (/usr/lib/postgresql/VERSION/bin).
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null 2>&1; then
  command -v apt-get >/dev/null || die "PostgreSQL is missing (and no apt-get to install it)"
  say "installing postgresql"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends postgresql >/dev/null
fi
command -v setpriv >/dev/null || die "setpriv is missing (Debian: util-linux): the tests run PostgreSQL as nobody"
[ -c /dev/net/tun ] || die "/dev/net/tun is missing: wireguard-go (the stock WireGuard peer in the harness) needs it"

say "formatting (cargo fmt --check)"
cargo fmt --all -- --check

say "lints (cargo clippy, warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

say "unit and integration tests (cargo test)"
# Tests run side by side, as cargo runs them by default: none may depend on
# how fast or idle the machine is (docs/testing.md, "Time in tests").
cargo test --workspace --locked

say "fuzz smoke (fuzz/run.sh, ${FUZZ_SECONDS:-10} s per target)"
# Every fuzz target replays its committed seeds and past crash inputs, then
# fuzzes briefly; a crash or a reference-model violation fails the run.
# libFuzzer's instrumentation needs the nightly toolchain; the script
# installs cargo-fuzz itself when it is missing.
rustup toolchain list 2>/dev/null | grep -q '^nightly' \
  || die "the fuzz smoke needs the nightly toolchain: rustup toolchain install nightly"
FUZZ_SECONDS="${FUZZ_SECONDS:-10}" fuzz/run.sh

say "netns harness (tests/netns/run.sh)"
cargo build -p hushgate -p hushgate-netem --locked
tests/netns/run.sh
# The chaos scenario once more with the control plane's state in
# PostgreSQL: seed 57's first six faults are three PostgreSQL SIGKILLs,
# two gateway SIGKILLs and a revocation (about 2 minutes).
CONTROL_DB=postgres CHAOS_SEED=57 CHAOS_FAULTS=6 tests/netns/run.sh 19

say "the demo (hushgate demo, debug build, 4 MiB file)"
# The README's first command, so a change that breaks it fails CI too.
target/debug/hushgate demo --file-mib 4

say "Debian package (tests/package.sh)"
# Builds the release binary and the .deb (installs cargo-deb when it is
# missing), installs it with dpkg, runs the units' command lines as their
# users with their capabilities, one admission end to end, then purges it.
tests/package.sh

echo
echo "all test stages passed"
