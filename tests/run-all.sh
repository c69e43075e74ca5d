#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit and integration tests.
# Usage: tests/run-all.sh            (from the repository root)
# It checks its prerequisites first and stops with a clear message when
# one is missing; it never skips a part silently.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n== %s\n' "$*"; }
need() {
  command -v "$1" >/dev/null 2>&1 || {
    echo "tests/run-all.sh: '$1' is missing: $2" >&2
    exit 2
  }
}

need cargo "install the Rust toolchain (rustup) first"
need cc "install a C compiler (Debian: apt-get install build-essential); SQLite is built from source"

say "formatting (cargo fmt --check)"
cargo fmt --all -- --check

say "lints (cargo clippy, warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

say "unit and integration tests (cargo test)"
cargo test --workspace --locked

echo
echo "all test stages passed"
