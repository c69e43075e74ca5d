#!/usr/bin/env bash
# Runs hushgate's fuzz targets for a bounded time each (libFuzzer through
# cargo-fuzz, on the nightly toolchain).
#
#   fuzz/run.sh                 every target
#   fuzz/run.sh dispatcher ...  only these
#
# Knobs (environment):
#   FUZZ_SECONDS  seconds per target (default 60)
#   FUZZ_JOBS     parallel fuzzing processes per target (default 1; more
#                 runs libFuzzer's fork mode, which merges their finds)
#   FUZZ_RUNS     stop a target after this many executions instead (per
#                 worker; 0 = no limit, the default)
#   FUZZ_LOG      directory for each target's libFuzzer log (default
#                 fuzz/work/logs)
#
# The committed seeds (fuzz/corpus/TARGET) and the inputs of bugs found
# before (fuzz/regressions/TARGET) are read, never written: what the
# fuzzer learns goes to fuzz/work/TARGET (not committed), so a rerun
# starts from there. A crash or a reference-model violation stops the run
# with the input in fuzz/artifacts/TARGET and the command that replays it.
# At the end a table gives each target's executions and coverage
# (libFuzzer's cov: edges and ft: features).
set -euo pipefail
cd "$(dirname "$0")"

SECONDS_PER_TARGET="${FUZZ_SECONDS:-60}"
JOBS="${FUZZ_JOBS:-1}"
RUNS="${FUZZ_RUNS:-0}"
LOGS="${FUZZ_LOG:-work/logs}"
ALL=(dispatcher datagram inner_packet tcp_segments feed_apply api_json access_answer gateway_config netlink_answers key_policy_text)
TARGETS=("$@")
[ "${#TARGETS[@]}" -gt 0 ] || TARGETS=("${ALL[@]}")

die() { echo "fuzz/run.sh: $*" >&2; exit 2; }

rustup toolchain list 2>/dev/null | grep -q '^nightly' \
  || die "the nightly toolchain is missing (rustup toolchain install nightly): libFuzzer's instrumentation needs it"
if ! cargo fuzz --version >/dev/null 2>&1; then
  # --debug: cargo-fuzz only drives cargo and starts the target, so an
  # unoptimized build does the job and installs in half the time (140 s
  # instead of 276 s on the shared 2-core machine; docs/testing.md).
  echo "== installing cargo-fuzz from crates.io"
  start=$(date +%s)
  cargo install --locked --debug cargo-fuzz --version 0.13.2
  echo "installed in $(( $(date +%s) - start )) s"
fi

# Release (-O) with debug assertions and overflow checks on in the crates
# that decode (fuzz/Cargo.toml's profile says which) and off in the
# crypto, no sanitizer: every hushgate crate forbids unsafe code, so
# AddressSanitizer would mostly cost speed; see docs/testing.md.
BUILD=(--release --sanitizer none)
echo "== building the fuzz targets"
start=$(date +%s)
cargo +nightly fuzz build "${BUILD[@]}"
echo "built in $(( $(date +%s) - start )) s"

mkdir -p "$LOGS"
declare -A RESULT
failed=()
for t in "${TARGETS[@]}"; do
  mkdir -p "work/$t" "artifacts/$t"
  dirs=("work/$t")
  for d in "corpus/$t" "regressions/$t"; do
    [ -d "$d" ] && dirs+=("$d")
  done
  flags=(-max_total_time="$SECONDS_PER_TARGET" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1)
  [ "$RUNS" != 0 ] && flags+=(-runs="$RUNS")
  [ -f "dict/$t.dict" ] && flags+=(-dict="dict/$t.dict")
  [ "$JOBS" -gt 1 ] && flags+=(-fork="$JOBS")
  echo "== $t: ${SECONDS_PER_TARGET} s, $JOBS worker(s)"
  log="$LOGS/$t.log"
  if cargo +nightly fuzz run "${BUILD[@]}" "$t" "${dirs[@]}" -- "${flags[@]}" >"$log" 2>&1; then
    status=ok
  else
    status=FAILED
    failed+=("$t")
    grep -E "panicked at|^  left|^ right|violation|SUMMARY|Test unit written" "$log" | head -12 >&2 || true
    echo "replay: cargo run --manifest-path fuzz/Cargo.toml --example replay -- $t fuzz/artifacts/$t/<file>" >&2
  fi
  # One process ends with its stat:: lines; fork mode's last status line
  # ("#EXECS: cov: ...") counts every child's executions.
  execs=$(grep -h 'stat::number_of_executed_units' "$log" | awk '{s+=$2} END {print s+0}' || true)
  if [ "${execs:-0}" = 0 ]; then
    execs=$(grep -hoE '^#[0-9]+' "$log" | tail -1 | tr -d '#' || true)
  fi
  cov=$(grep -hoE 'cov: [0-9]+ ft: [0-9]+' "$log" | tail -1 || true)
  RESULT[$t]="$status  executions ${execs}  ${cov:-cov: ?}"
done

echo
echo "== results (${SECONDS_PER_TARGET} s per target, $JOBS worker(s))"
for t in "${TARGETS[@]}"; do
  printf '%-16s %s\n' "$t" "${RESULT[$t]}"
done
[ "${#failed[@]}" -eq 0 ] || die "failed: ${failed[*]} (inputs in fuzz/artifacts/, logs in fuzz/$LOGS)"
