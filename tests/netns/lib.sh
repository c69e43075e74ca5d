# Helpers shared by the netns harness (tests/netns/run.sh) and the
# benchmark runner (bench/run.sh). Sourced, not run. The caller sets P (the
# namespace prefix) before using `ns` and `bg`.

# Seconds since $1 (a `date +%s.%N` stamp), to two decimals.
since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }'; }

# Runs a command in namespace $P-NAME.
ns() { local n="$1"; shift; ip netns exec "$P-$n" "$@"; }

# Starts a command in namespace $P-NAME in the background, its output in
# FILE; prints its pid.
bg() { local n="$1" out="$2"; shift 2; ip netns exec "$P-$n" "$@" >"$out" 2>&1 & echo $!; }

# Retries CMD every 0.1 s until it succeeds, for at most SECONDS.
wait_for() { # wait_for WHAT SECONDS CMD...
  local what="$1" secs="$2"; shift 2
  local end=$(( $(date +%s) + secs ))
  until "$@" >/dev/null 2>&1; do
    if [ "$(date +%s)" -ge "$end" ]; then echo "timed out waiting for $what" >&2; return 1; fi
    sleep 0.1
  done
}
