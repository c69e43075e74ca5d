#!/usr/bin/env bash
# The control plane's memory under bursts of logins (issue 20's soak found
# its RSS growing; docs/testing.md, "The soak"). Starts `hushgate control`
# on loopback with a state folder of its own, adds one user, then for
# ROUNDS rounds sends BURST logins at once and waits PAUSE s (more than
# the 10 s after which tokio ends an idle blocking thread, so each burst
# may meet new threads), printing the RSS (MiB) and thread count after
# each burst. Extra arguments are put in the control plane's environment,
# e.g. MALLOC_ARENA_MAX=2.
#
#   bench/login-memory.sh [BIN] [PORT] [ROUNDS] [BURST] [PAUSE] [VAR=VALUE...]
#
# Defaults: target/debug/hushgate, 18443, 12 rounds, 8 logins, 11 s.
# Traffic stays on 127.0.0.1.
set -euo pipefail
BIN="${1:-$(dirname "$0")/../target/debug/hushgate}"
PORT="${2:-18443}"; ROUNDS="${3:-12}"; BURST="${4:-8}"; PAUSE="${5:-11}"
shift $(( $# < 5 ? $# : 5 ))
S=$(mktemp -d /tmp/hushgate-login-memory.XXXXXX)
PW="login-memory-$$-password"
env "$@" "$BIN" control --listen "127.0.0.1:$PORT" --state "$S/ctl" --login-rate 100000 >"$S/control.log" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null; wait $PID 2>/dev/null; rm -rf "$S"' EXIT
for _ in $(seq 60); do
  [ -s "$S/ctl/control-url" ] && curl -sf --cacert "$S/ctl/ca.pem" "https://127.0.0.1:$PORT/v1/health" -o /dev/null && break
  sleep 0.5
done
echo "$PW" | "$BIN" admin --state "$S/ctl" user add u >/dev/null
body="{\"username\":\"u\",\"password\":\"$PW\"}"
rss() { awk '/VmRSS/ { printf "%.1f", $2 / 1024 }' "/proc/$PID/status"; }
echo "round rss_mib threads"
echo "0 $(rss) $(ls "/proc/$PID/task" | wc -l)"
for r in $(seq "$ROUNDS"); do
  pids=()
  for _ in $(seq "$BURST"); do
    curl -sf --cacert "$S/ctl/ca.pem" -H 'content-type: application/json' -d "$body" \
      "https://127.0.0.1:$PORT/v1/login" -o /dev/null & pids+=($!)
  done
  wait "${pids[@]}"
  echo "$r $(rss) $(ls "/proc/$PID/task" | wc -l)"
  sleep "$PAUSE"
done
