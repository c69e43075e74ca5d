#!/usr/bin/env bash
# Runs a command (default: the unit and integration tests) while every core
# is kept busy by another process, so a test that only passes on an idle,
# fast machine fails here and not on a user's machine or in CI.
#
#   tests/under-load.sh                       cargo test --workspace
#   tests/under-load.sh cargo test -p hushgate-control
#   LOAD_WORKERS=4 tests/under-load.sh        four busy loops instead of one per core
#   ROUNDS=3 tests/under-load.sh              the same command three times in a row
#
# The busy loops run at the same priority as the tests (not niced): that is
# what a shared CI runner or a laptop doing something else looks like.
set -euo pipefail
cd "$(dirname "$0")/.."

workers="${LOAD_WORKERS:-$(nproc)}"
rounds="${ROUNDS:-1}"
[ "$#" -gt 0 ] || set -- cargo test --workspace --locked

# Build first, without the load: compiling is not what is being tested.
if [ "$1" = cargo ] && [ "${2:-}" = test ]; then
  "$@" --no-run
fi

pids=()
stop_load() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap stop_load EXIT
for _ in $(seq "$workers"); do
  ( while :; do :; done ) &
  pids+=("$!")
done
echo "under-load: $workers busy loops running; $rounds round(s) of: $*" >&2

for r in $(seq "$rounds"); do
  echo "under-load: round $r of $rounds" >&2
  "$@"
done
echo "under-load: every round passed with all cores busy" >&2
