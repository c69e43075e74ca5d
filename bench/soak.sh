#!/usr/bin/env bash
# Soak (issue 20; a benchmark job, not CI): the netns harness's world
# (tests/netns/run.sh: control plane on SQLite, the IPv4 gateway with its
# kernel pre-filter, a client behind its NAT, an attacker) left running
# for SOAK_SECS with
#   - admissions churning at a steady rate: SOAK_CHURN workers each get an
#     admission with `hushgate connect --wg-config` (a password login, a
#     fresh key, acknowledged by the gateway) every SOAK_PERIOD s, and
#     revoke every other one at once; the rest expire (server ttl 15 s);
#   - a shim (`hushgate connect`) that downloads the 24 MiB file at
#     4 MiB/s again and again and checks its sha256, and a second one
#     started and killed every 30 s (sessions that come and go);
#   - the client's NAT moving to another of 12 public addresses every
#     20 s (the shim roams, re-admissions from new sources);
#   - a background flood from the attacker: SOAK_FLOOD_PPS datagrams/s of
#     UDP junk to the gateway's port (hping3), dropped by the pre-filter.
# Every SOAK_SAMPLE s it samples the gateway's and the control plane's
# RSS and open file descriptors, the kernel pre-filter's set elements, the
# gateway's peers and the control plane's live admissions (and their
# distinct sources). At the end it prints the memory slope of each
# process (least squares over the whole run and over its second half, in
# KiB per hour), the fd counts (first, last, max) and the largest excess
# of set elements over distinct live sources.
#
#   nice -n 10 bench/soak.sh                     (as root; SOAK_SECS=3600)
#   SOAK_SECS=120 SOAK_SAMPLE=5 bench/soak.sh    (a quick look)
#
# The samples (CSV) and the summary go to SOAK_OUT (default
# /tmp/hushgate-soak-DATE.{csv,txt}). HUSHGATE_BIN picks the binary
# (default target/debug/hushgate, as the harness).
#
# Run directly, it runs the harness with this file as an extra scenario
# ("soak"); the harness sources it (HARNESS_EXTRA) for scenario_soak.

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  here="$(cd "$(dirname "$0")" && pwd)"
  export SOAK_OUT="${SOAK_OUT:-/tmp/hushgate-soak-$(date -u +%Y%m%dT%H%M%S)}"
  HARNESS_EXTRA="$here/soak.sh" exec "$here/../tests/netns/run.sh" soak
fi

SOAK_SECS="${SOAK_SECS:-3600}"
SOAK_SAMPLE="${SOAK_SAMPLE:-10}"
SOAK_CHURN="${SOAK_CHURN:-2}"
SOAK_PERIOD="${SOAK_PERIOD:-2}"
SOAK_FLOOD_PPS="${SOAK_FLOOD_PPS:-2000}"

# The background loops run while this holds (the scenario's end or the
# harness removing its folder stops them).
soak_running() { [ -d "$W" ] && [ ! -e "$W/soak-stop" ]; }
# How many lines of FILE are WORD (0 when there is no FILE yet).
count_lines() { local n; n=$(grep -c "^$1\$" "$2" 2>/dev/null) || true; echo "${n:-0}"; }
# Resident memory (KiB) and open descriptors of a pid.
proc_rss() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }
proc_fds() { find "/proc/$1/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l; }
# Elements in every set of the gateway's pre-filter table, in the kernel.
kernel_elements() { # kernel_elements PORT
  ns edge nft -j list table inet "hushgate_$1" 2>/dev/null | python3 -c '
import json, sys
try:
    d = json.load(sys.stdin)["nftables"]
except Exception:
    print(-1); sys.exit()
print(sum(len(o["set"].get("elem", [])) for o in d if "set" in o))'
}

soak_churn_worker() { # soak_churn_worker N
  local n="$1" i=0 user out adm
  while soak_running; do
    i=$((i + 1)); user="soak$(( (n + i) % 4 ))"
    out=$(HUSHGATE_PASSWORD="$PASSWORD" ns cli "$BIN" connect --control https://203.0.113.2:8443 \
      --ca "$W/ctl/ca.pem" --user "$user" --server home --wg-config "$W/soak-$n.conf" 2>&1) || {
      echo "churn $n: $out" >>"$W/soak-churn-errors.log"; sleep "$SOAK_PERIOD"; continue; }
    echo ok >>"$W/soak-churn-$n.count"
    if [ $((i % 2)) = 0 ]; then
      adm=$(sed -n 's/.*admission \(adm_[0-9a-f]*\),.*/\1/p' <<<"$out" | head -1)
      admin admission revoke "$adm" >/dev/null 2>>"$W/soak-churn-errors.log" || true
    fi
    sleep "$SOAK_PERIOD"
  done
}

soak_downloader() {
  local pid k=0
  pid=$(start_shim 32450 soak-shim) || return 1
  while soak_running; do
    k=$((k + 1))
    # A download the NAT's move cuts (the shim's new admission has a new
    # tunnel address) is counted as cut; one that completes must be intact.
    if ns cli curl -sS --max-time 60 --limit-rate 4M -o "$W/soak-dl.bin" http://127.0.0.1:32450/file.bin 2>>"$W/soak-dl-errors.log"; then
      if check_sha "$W/soak-dl.bin"; then echo ok >>"$W/soak-dl.count"; else echo corrupt >>"$W/soak-dl.count"; fi
    else
      echo fail >>"$W/soak-dl.count"; sleep 1
    fi
  done
}

soak_session_churn() {
  local pid
  while soak_running; do
    pid=$(HUSHGATE_PASSWORD="$PASSWORD" bg cli "$W/soak-shim2.log" "$BIN" connect --control https://203.0.113.2:8443 \
      --ca "$W/ctl/ca.pem" --user bob --server home --listen 127.0.0.1:32451)
    sleep 30
    kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true
  done
}

soak_roamer() {
  local k=0
  while soak_running; do
    sleep 20
    k=$(( (k + 1) % 12 ))
    ns cnat nft flush chain ip cnat post
    ns cnat nft add rule ip cnat post oifname "wan" ip saddr 198.51.100.0/24 snat to "203.0.113.$((34 + k))"
    ns cnat conntrack -F >/dev/null 2>&1 || true
  done
}

scenario_soak() { # soak: churn, roaming and a flood for SOAK_SECS; memory, fds and set sizes sampled
  local out="${SOAK_OUT:-$W/soak}"
  local k
  for k in $(seq 36 45); do ns cnat ip addr add "203.0.113.$k/28" dev wan; done
  for k in 0 1 2 3; do
    echo "$PASSWORD" | admin user add "soak$k" >/dev/null
    admin grant add "soak$k" home >/dev/null
  done
  local -a helpers=()
  soak_downloader & helpers+=($!)
  soak_session_churn & helpers+=($!)
  for k in $(seq 1 "$SOAK_CHURN"); do soak_churn_worker "$k" & helpers+=($!); done
  soak_roamer & helpers+=($!)
  local flood; flood=$(bg atk "$W/soak-flood.log" hping3 --udp -p 51820 -d 148 -i "u$((1000000 / SOAK_FLOOD_PPS))" 203.0.113.18)
  trap 'touch "$W/soak-stop"; kill '"${helpers[*]}"' '"$flood"' 2>/dev/null || true' EXIT
  local gw; gw=$(cat "$W/gw.pid")
  log "  soak for $SOAK_SECS s (gateway pid $gw, control plane pid $CTL_PID, flood $SOAK_FLOOD_PPS/s, $SOAK_CHURN churn workers); samples to $out.csv"
  echo "t,gw_rss_kib,gw_fds,ctl_rss_kib,ctl_fds,set_elements,gw_peers,live_admissions,live_sources,downloads_ok,downloads_failed,churn_admissions,kernel_drops,downloads_corrupt" >"$out.csv"
  local t0; t0=$(date +%s)
  local now t adm peers
  while soak_running; do
    now=$(date +%s); t=$((now - t0))
    kill -0 "$gw" && kill -0 "$CTL_PID" || { echo "the gateway or the control plane died" >&2; return 1; }
    adm=$(admin admission list --json 2>/dev/null | python3 -c '
import json, sys
a = [x for x in json.load(sys.stdin) if x["state"] == "active"]
print(len(a), len({x["source"] for x in a}))' || echo "-1 -1")
    peers=$(ns edge "$BIN" gateway status --state "$W/gw" --json 2>/dev/null | python3 -c '
import json, sys; print(len(json.load(sys.stdin)["gateway"]["peers"]))' || echo -1)
    echo "$t,$(proc_rss "$gw"),$(proc_fds "$gw"),$(proc_rss "$CTL_PID"),$(proc_fds "$CTL_PID"),$(kernel_elements 51820),$peers,${adm% *},${adm#* },$(count_lines ok "$W/soak-dl.count"),$(count_lines fail "$W/soak-dl.count"),$(cat "$W"/soak-churn-*.count 2>/dev/null | wc -l),$(kernel_drops 51820),$(count_lines corrupt "$W/soak-dl.count")" >>"$out.csv"
    [ "$t" -ge "$SOAK_SECS" ] && break
    sleep "$SOAK_SAMPLE"
  done
  kill "${helpers[@]}" "$flood" 2>/dev/null || true
  cp "$W/soak-churn-errors.log" "$out.churn-errors.log" 2>/dev/null || true
  python3 - "$out.csv" <<'EOF' | tee "$out.txt"
import csv, sys
rows = [{k: int(v) for k, v in r.items()} for r in csv.DictReader(open(sys.argv[1]))]
def slope(xs, ys):
    n = len(xs); mx = sum(xs) / n; my = sum(ys) / n
    d = sum((x - mx) ** 2 for x in xs)
    return 0.0 if d == 0 else sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / d
t = [r["t"] for r in rows]
half = [r for r in rows if r["t"] >= t[-1] / 2]
print(f"soak: {t[-1]} s, {len(rows)} samples")
for p in ("gw", "ctl"):
    rss = [r[f"{p}_rss_kib"] for r in rows]
    s_all = slope(t, rss) * 3600
    s_half = slope([r["t"] for r in half], [r[f"{p}_rss_kib"] for r in half]) * 3600
    fds = [r[f"{p}_fds"] for r in rows]
    name = {"gw": "gateway", "ctl": "control plane"}[p]
    print(f"{name}: RSS first {rss[0]} KiB, last {rss[-1]} KiB, max {max(rss)} KiB; slope {s_all:+.0f} KiB/h (whole run), {s_half:+.0f} KiB/h (second half); fds first {fds[0]}, last {fds[-1]}, max {max(fds)}")
excess = max(r["set_elements"] - r["live_sources"] for r in rows)
print(f"pre-filter set elements: max {max(r['set_elements'] for r in rows)}, last {rows[-1]['set_elements']}; largest excess over distinct live sources {excess}")
print(f"gateway peers: max {max(r['gw_peers'] for r in rows)}; live admissions: max {max(r['live_admissions'] for r in rows)}")
last = rows[-1]
print(f"churn: {last['churn_admissions']} admissions acknowledged; downloads: {last['downloads_ok']} complete and intact, {last.get('downloads_corrupt', 0)} complete but corrupt, {last['downloads_failed']} cut (by the NAT's moves); kernel drops (flood): {last['kernel_drops']}")
EOF
  log "  summary in $out.txt"
}
