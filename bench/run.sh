#!/usr/bin/env bash
# Side-by-side benchmark (issue 6): hushgate vs wireguard-go vs plain TCP,
# time to access (tunnel and direct), cost of junk with and without the
# gateway's kernel pre-filter; and under Internet conditions (issue 12,
# bench/inet.sh): delay, loss and a bottleneck made by the user-space
# emulator (tools/netem), 50 players through one gateway. Run as root,
# with a release build:
#
#   cargo build --release -p hushgate --bin hushgate --example flood --example access_time -p hushgate-netem
#   HUSHGATE_BIN=target/release/hushgate bench/run.sh
#
# (or `just bench`). It prints the tables and writes them, with the
# machine's description and the exact command, to docs/benchmarks.md as
# the sections "Side by side (issue 6)" and "Internet conditions (issue
# 12)" (only a section whose parts ran is replaced). The issue-6 parts take
# about 11 minutes on 2 CPUs (about 8 of them floods); the issue-12 parts
# with their defaults about 2.5 hours (see bench/inet.sh; SKIP and the
# INET_* knobs pick a subset, e.g. SKIP="tput netem access direct flood"
# INET_MODES=1R INET_RTTS="0 20" for the issue-12 part alone, quickly).
#
# Topology: the netns harness's (tests/netns/run.sh; documentation ranges
# only, in namespaces this script makes and removes on exit or failure).
# The home router forwards UDP 51820 to the gateway under test (server
# `home`: the default kernel pre-filter, here `--prefilter required`, and
# the direct service `plex` on TCP 32401, also forwarded), UDP 51840 to a
# second gateway with the user-space filter only (server `home-us`,
# `--prefilter off`: the issue-6 configuration, kept for the flood rows),
# UDP 51830 to a wireguard-go (the stock-WireGuard baseline), and TCP 5202
# to an iperf3 only while the plain-TCP ceiling is measured.
#
#   ctl  203.0.113.2  ─┐                               ┌─ home 203.0.113.18 ─ edge 192.0.2.2
#                      ├── inet ───────────────────────┤   gateway :51820 (+ direct tcp :32401),
#   atk  203.0.113.50 ─┘                               │   gateway :51840 (--prefilter off),
#                                                      │   wireguard-go :51830,
#                                                      │   iperf3 -s on 127.0.0.1:5201 (media stand-in),
#                                                      │   python3 http.server on 127.0.0.1:32400 (media),
#                                                      │   paced sender on 127.0.0.1:5204 (players)
#                                                      └─ cnat 203.0.113.34 ─ cli 198.51.100.2
#
# While an emulator runs (issue-12 parts, and the 10 ms rows), inet routes
# everything between the client side and the home side through its TUN
# devices (tests/netns/lib.sh, emu_rules).
#
# What is measured:
# - tput: iperf3 through `hushgate connect` (gateway :51820), wireguard-go
#   and plain TCP, one and eight streams.
# - access: already logged in, time from the access request to the first
#   byte of `GET /identity` through the shim's local port
#   (hushgate/examples/access_time.rs); and `hushgate connect` from process
#   start (password login included).
# - direct: already logged in, time from `access_direct` (answered once the
#   gateway has confirmed the pre-filter's element) to the first byte of
#   `GET /identity` over plain TCP at the direct endpoint
#   (203.0.113.18:32401 -> 127.0.0.1:32400); revoked after each run
#   (`access_time --direct`).
# - flood: one iperf3 stream (-R) during a UDP flood from 203.0.113.50
#   (hushgate/examples/flood.rs), against, per FLOOD_TARGETS: `hgk` the
#   gateway with the kernel pre-filter, `hgu` the gateway with the
#   user-space filter only, `wg` wireguard-go; each flood also as a control
#   (the same flood dropped by nftables on the edge host's ingress) and
#   alone (no stream: drop rate and the target's CPU). For `hgk` the drops
#   come from the counter of the pre-filter's drop rule (`nft list chain
#   inet hushgate_51820 tunnel`; its bytes, since a GSO batch is one packet
#   to it), and the gateway's own `datagrams` and drop counters (status
#   JSON) show what still reached the process. The flood runs 1 s
#   longer than the stream so that it covers the stream's whole measured
#   window (iperf3 -O 1 -t FLOOD_SECS-1, started 0.5 s into the flood).
#
# Knobs (environment): SECS (iperf3 seconds, 5), REPS (3), MODES
# ("1 1R 8", also "8R"), NETEM (1: also with a 10 ms round trip, through
# the emulator), ACCESS_RUNS (100,
# for the tunnel and the direct figure each), PROC_RUNS (100), FLOOD_SECS
# (4), FLOOD_MAX (60000000), FLOOD_REPS (3), FLOOD_TARGETS ("hgk hgu wg"),
# SKIP (space-separated parts to skip: tput netem access direct flood
# ceiling inet players), the INET_* and PLAYERS* knobs of bench/inet.sh,
# NO_DOC=1 (do not touch docs/benchmarks.md), KEEP_LOGS=1, PROFILE=1
# (only profile: `perf record -g` of the gateway's and the shim's data-path
# threads during one 8 s stream each way through the shim; reports in the
# log folder, nothing else measured). The release binary is stripped, so
# profile the `profiling` build, which keeps symbols and line tables:
# cargo build --profile profiling -p hushgate --bin hushgate --example flood
# --example access_time, then HUSHGATE_BIN=target/profiling/hushgate
# PROFILE=1 bench/run.sh (or `just bench-profile`).
set -euo pipefail

# The exact command, with the knobs set by the caller (before defaults).
CMDLINE="HUSHGATE_BIN=${HUSHGATE_BIN:-target/release/hushgate}"
for v in SECS REPS MODES NETEM ACCESS_RUNS PROC_RUNS FLOOD_SECS FLOOD_MAX FLOOD_REPS FLOOD_TARGETS SKIP \
  INET_RTTS INET_LOSSES INET_POINTS INET_MODES INET_PATHS INET_BOTTLENECK INET_BN_RTT INET_BN_RATE INET_SHALLOW \
  INET_DEEP INET_SECS INET_OMIT INET_REPS INET_SEED PLAYERS PLAYERS_MBPS PLAYERS_SECS PLAYERS_SPEC; do
  if [ -n "${!v+x}" ]; then CMDLINE="$CMDLINE $v='${!v}'"; fi
done
CMDLINE="$CMDLINE bench/run.sh"
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
# shellcheck source=tests/netns/lib.sh
. "$ROOT/tests/netns/lib.sh"
# shellcheck source=bench/inet.sh
. "$HERE/inet.sh"
BIN="${HUSHGATE_BIN:-$ROOT/target/release/hushgate}"
case "$BIN" in /*) ;; *) BIN="$ROOT/$BIN" ;; esac
EXDIR="${EXAMPLES_DIR:-$(dirname "$BIN")/examples}"
FLOOD="$EXDIR/flood"
ACCESS="$EXDIR/access_time"
NETEM_BIN="${NETEM_BIN:-$(dirname "$BIN")/hushgate-netem}"
SECS="${SECS:-5}"
REPS="${REPS:-3}"
MODES="${MODES:-1 1R 8}"
NETEM="${NETEM:-1}"
ACCESS_RUNS="${ACCESS_RUNS:-100}"
PROC_RUNS="${PROC_RUNS:-100}"
FLOOD_SECS="${FLOOD_SECS:-4}"
FLOOD_MAX="${FLOOD_MAX:-60000000}"
FLOOD_REPS="${FLOOD_REPS:-3}"
FLOOD_TARGETS="${FLOOD_TARGETS:-hgk hgu wg}"
SKIP="${SKIP:-}"
for t in $FLOOD_TARGETS; do
  case "$t" in hgk | hgu | wg) ;; *) echo "bench: FLOOD_TARGETS: unknown target '$t' (use hgk, hgu, wg)" >&2; exit 2 ;; esac
done
[ "$FLOOD_SECS" -ge 2 ] 2>/dev/null || { echo "bench: FLOOD_SECS must be a whole number of seconds, at least 2 (the stream runs FLOOD_SECS-1 s after 1 s omitted)" >&2; exit 2; }
P="hb$$"
W="$(mktemp -d /tmp/hushgate-bench.XXXXXX)"
# `hushgate connect` keeps a device credential under XDG_STATE_HOME: one
# per run, so that a credential from an earlier run (another control
# plane) is never presented.
export XDG_STATE_HOME="$W/xdg-state"
NSES=(inet ctl home edge cnat cli atk)
RES="$W/results.txt"   # key value lines
: >"$RES"

T0=$(date +%s.%N)
log() { printf '[%6ss] %s\n' "$(since "$T0")" "$*" >&2; }
skip() { case " $SKIP " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

cleanup() {
  set +e
  for n in "${NSES[@]}"; do
    for pid in $(ip netns pids "$P-$n" 2>/dev/null); do kill -9 "$pid" 2>/dev/null; done
  done
  { wait; } 2>/dev/null
  for n in "${NSES[@]}"; do ip netns del "$P-$n" 2>/dev/null; done
  rm -f /var/run/wireguard/"$P"*.sock
  if [ -n "${KEEP_LOGS:-}" ]; then echo "logs kept in $W" >&2; else rm -rf "$W"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

need() { command -v "$1" >/dev/null 2>&1 || { echo "bench: '$1' is missing ($2)" >&2; exit 2; }; }
[ "$(id -u)" = 0 ] || { echo "bench: must run as root (it creates network namespaces)" >&2; exit 2; }
need ip "apt-get install iproute2"; need tc "apt-get install iproute2"
need nft "apt-get install nftables"; need wg "apt-get install wireguard-tools"
need wireguard-go "apt-get install wireguard-go"; need iperf3 "apt-get install iperf3"
need curl "apt-get install curl"; need python3 "apt-get install python3"
for b in "$BIN" "$FLOOD" "$ACCESS" "$NETEM_BIN"; do
  [ -x "$b" ] || { echo "bench: $b is not built (cargo build --release -p hushgate --example flood --example access_time -p hushgate-netem)" >&2; exit 2; }
done
[ -c /dev/net/tun ] || { echo "bench: /dev/net/tun is missing (needed by wireguard-go)" >&2; exit 2; }

# ---------------------------------------------------------------- topology
# (helpers as in tests/netns/run.sh)


link() { # link NS_A IF_A ADDR4_A NS_B IF_B ADDR4_B
  local a="$1" ia="$2" a4="$3" b="$4" ib="$5" b4="$6"
  ip link add "$P$ia" type veth peer name "$P$ib"
  ip link set "$P$ia" netns "$P-$a" name "$ia"
  ip link set "$P$ib" netns "$P-$b" name "$ib"
  ns "$a" ip addr add "$a4" dev "$ia"; ns "$b" ip addr add "$b4" dev "$ib"
  ns "$a" ip link set "$ia" up; ns "$b" ip link set "$ib" up
}


build_topology() {
  for n in "${NSES[@]}"; do ip netns add "$P-$n"; ns "$n" ip link set lo up; done
  for n in inet home cnat; do ns "$n" sysctl -qw net.ipv4.ip_forward=1; done
  link inet i-ctl 203.0.113.1/28   ctl eth0 203.0.113.2/28
  link inet i-home 203.0.113.17/28 home wan 203.0.113.18/28
  link inet i-cnat 203.0.113.33/28 cnat wan 203.0.113.34/28
  link inet i-atk 203.0.113.49/28  atk eth0 203.0.113.50/28
  link home lan 192.0.2.1/24       edge eth0 192.0.2.2/24
  link cnat lan 198.51.100.1/24    cli eth0 198.51.100.2/24
  ns ctl ip route add default via 203.0.113.1
  ns atk ip route add default via 203.0.113.49
  ns home ip route add default via 203.0.113.17
  ns cnat ip route add default via 203.0.113.33
  ns edge ip route add default via 192.0.2.1
  ns cli ip route add default via 198.51.100.1
  # The emulator's policy routing between the client side and the home
  # side (inactive until an emulator runs).
  emu_rules inet i-cnat 203.0.113.32/28 i-home 203.0.113.16/28
  # The home router as in the harness (UDP 51820 and the direct service's
  # TCP 32401), plus UDP 51840 for the user-space-only gateway and UDP
  # 51830 for the wireguard-go baseline; `plain_*` get a TCP forward only
  # while the plain-TCP ceiling is measured.
  ns home nft -f - <<'EOF'
table inet home {
  chain plain_pre { }
  chain plain_fwd { }
  chain pre {
    type nat hook prerouting priority dstnat;
    iifname "wan" ip daddr 203.0.113.18 udp dport 51820 dnat ip to 192.0.2.2:51820
    iifname "wan" ip daddr 203.0.113.18 udp dport 51830 dnat ip to 192.0.2.2:51830
    iifname "wan" ip daddr 203.0.113.18 udp dport 51840 dnat ip to 192.0.2.2:51840
    iifname "wan" ip daddr 203.0.113.18 tcp dport 32401 dnat ip to 192.0.2.2:32401
    jump plain_pre
  }
  chain post {
    type nat hook postrouting priority srcnat;
    oifname "wan" ip saddr 192.0.2.0/24 masquerade
  }
  chain input {
    type filter hook input priority filter; policy accept;
    iifname "wan" ct state established,related accept
    iifname "wan" drop
  }
  chain forward {
    type filter hook forward priority filter; policy drop;
    ct state established,related accept
    iifname "lan" accept
    iifname "wan" ip daddr 192.0.2.2 udp dport { 51820, 51830, 51840 } accept
    iifname "wan" ip daddr 192.0.2.2 tcp dport 32401 accept
    jump plain_fwd
  }
  chain output {
    type filter hook output priority filter; policy accept;
    oifname "wan" icmp type destination-unreachable drop
  }
}
EOF
  ns cnat nft -f - <<'EOF'
table ip cnat {
  chain post {
    type nat hook postrouting priority srcnat;
    oifname "wan" ip saddr 198.51.100.0/24 snat to 203.0.113.34
  }
}
EOF
  # The flood control: the same flood dropped by nftables on the edge
  # host's ingress (after the whole forwarding path, before any socket or
  # process). Empty unless `control_on`.
  ns edge nft -f - <<'EOF'
table netdev ctl {
  chain ingress {
    type filter hook ingress device "eth0" priority -500;
  }
}
EOF
}
control_on() { ns edge nft add rule netdev ctl ingress ip saddr 203.0.113.50 drop; }
control_off() { ns edge nft flush chain netdev ctl ingress; }
plain_on() {
  ns home nft add rule inet home plain_pre iifname wan ip daddr 203.0.113.18 tcp dport 5202 dnat ip to 192.0.2.2:5202
  ns home nft add rule inet home plain_fwd iifname wan ip daddr 192.0.2.2 tcp dport 5202 accept
}
plain_off() { ns home nft flush chain inet home plain_pre; ns home nft flush chain inet home plain_fwd; }
# This kernel has no sch_netem: the 10 ms round trip is the user-space
# emulator's (5 ms each way).
netem_on() { emu_start inet emu-tput --both delay=5ms; }
netem_off() { emu_stop; }

# ---------------------------------------------------------------- services

PASSWORD="bench-$$-password"
admin() { ns ctl "$BIN" admin --state "$W/ctl" "$@"; }

# pid of the process in namespace NS whose command line matches PATTERN
find_pid() {
  local n="$1" pat="$2" pid
  for pid in $(ip netns pids "$P-$n"); do
    if tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$pat"; then echo "$pid"; return 0; fi
  done
  return 1
}
# utime+stime of a process (all threads), in seconds
cpu_of() { awk '{ print ($14 + $15) / 100 }' "/proc/$1/stat"; }

# start_gateway NAME TOKEN LISTEN FLAGS...: a gateway in the edge
# namespace with its state in $W/NAME and its log in $W/NAME.log.
start_gateway() {
  local name="$1" token="$2" listen="$3"; shift 3
  HUSHGATE_ENROLL_TOKEN="$token" bg edge "$W/$name.log" "$BIN" gateway \
    --control https://203.0.113.2:8443 --ca "$W/ctl/ca.pem" --state "$W/$name" \
    --listen-udp "$listen" --public-endpoint "203.0.113.18:${listen##*:}" \
    --port-mapping off "$@" >/dev/null
}

# gw_key NAME: the public key of gateway NAME (status JSON, else its log).
gw_key() {
  local key
  key=$(ns edge "$BIN" gateway status --state "$W/$1" --json 2>/dev/null |
    python3 -c 'import json, sys; print(json.load(sys.stdin).get("public_key") or "")' 2>/dev/null) || key=""
  [ -n "$key" ] || key=$(grep -o 'key [A-Za-z0-9+/=]\{44\}' "$W/$1.log" | head -1 | cut -d' ' -f2)
  [ -n "$key" ] || { echo "bench: cannot find the public key of gateway $1 (see $W/$1.log)" >&2; exit 1; }
  echo "$key"
}

setup_world() {
  mkdir -p "$W/media"
  echo '<MediaContainer machineIdentifier="bench"/>' >"$W/media/identity"
  bg edge "$W/media.log" python3 -m http.server 32400 --bind 127.0.0.1 --directory "$W/media" >/dev/null
  bg edge "$W/iperf-gw.log" iperf3 -s -B 127.0.0.1 -p 5201 >/dev/null
  bg edge "$W/iperf-plain.log" iperf3 -s -B 192.0.2.2 -p 5202 >/dev/null
  bg ctl "$W/control.log" "$BIN" control --listen "0.0.0.0:8443" --state "$W/ctl" \
    --san 203.0.113.2 --admission-ttl 3600 --login-rate 1000 >/dev/null
  wait_for "control plane" 10 test -s "$W/ctl/control-url"
  wait_for "control plane HTTPS" 10 ns ctl curl -sf --cacert "$W/ctl/ca.pem" https://203.0.113.2:8443/v1/health -o /dev/null
  echo "$PASSWORD" | admin user add alice >/dev/null
  # Server home's admissions live a day: the stock WireGuard client of the
  # issue-12 rows is never renewed, and that part can take hours.
  TOKEN=$(admin server add home --binding exact --ttl 86400 | tail -1)
  TOKEN_US=$(admin server add home-us --binding exact --ttl 3600 | tail -1)
  # --direct: alice may also ask for direct (firewall-only) access to home.
  admin grant add alice home --direct >/dev/null
  admin grant add alice home-us >/dev/null
  # The gateway under test: the kernel pre-filter (`required`, not the
  # default `auto`, so that a host where it cannot be installed fails here
  # instead of silently measuring the user-space filter) and the direct
  # service.
  start_gateway gw "$TOKEN" 0.0.0.0:51820 --prefilter required \
    --service plex=32400:127.0.0.1:32400 --service iperf=5201:127.0.0.1:5201 \
    --service media=5204:127.0.0.1:5204 --direct plex=32401:127.0.0.1:32400
  # The issue-6 configuration for the user-space rows of the flood table.
  start_gateway gw-us "$TOKEN_US" 0.0.0.0:51840 --prefilter off \
    --service iperf=5201:127.0.0.1:5201
  wait_for "gateway in sync" 15 grep -q "in sync" "$W/gw.log" || { cat "$W/gw.log" >&2; exit 1; }
  wait_for "gateway (user-space filter only) in sync" 15 grep -q "in sync" "$W/gw-us.log" || { cat "$W/gw-us.log" >&2; exit 1; }
  GW_PID=$(find_pid edge "listen-udp 0.0.0.0:51820")
  GWU_PID=$(find_pid edge "listen-udp 0.0.0.0:51840")
  ns edge nft list chain inet hushgate_51820 tunnel >/dev/null ||
    { echo "bench: the gateway runs but its pre-filter table inet hushgate_51820 is missing; see $W/gw.log" >&2; exit 1; }
  GW_PUB=$(gw_key gw)
  GWU_PUB=$(gw_key gw-us)

  # wireguard-go on both ends (stock WireGuard baseline), tunnel
  # 203.0.113.193 (edge) <-> 203.0.113.194 (client).
  local ek ck
  ek=$(wg genkey); ck=$(wg genkey)
  WG_EDGE_PUB=$(echo "$ek" | wg pubkey)
  WG_CLI_PUB=$(echo "$ck" | wg pubkey)
  start_wgo edge "${P}e" "$ek" 51830 "$WG_CLI_PUB" "" 203.0.113.194/32 203.0.113.193/32
  start_wgo cli "${P}c" "$ck" "" "$WG_EDGE_PUB" 203.0.113.18:51830 203.0.113.193/32 203.0.113.194/32
  WGE_PID=$(find_pid edge "wireguard-go -f ${P}e")
  WGC_PID=$(find_pid cli "wireguard-go -f ${P}c")
  bg edge "$W/iperf-wg.log" iperf3 -s -B 203.0.113.193 -p 5203 >/dev/null
  # Connection refused (curl exit 7) comes back only through the tunnel.
  wait_for "wireguard-go tunnel" 10 bash -c "ip netns exec $P-cli curl -s --max-time 1 http://203.0.113.193:9/; [ \$? = 7 ]"

  # The shims for the throughput and flood runs: 127.0.0.1:5301 through the
  # gateway under test, 127.0.0.1:5302 through the user-space-only one.
  HUSHGATE_PASSWORD="$PASSWORD" bg cli "$W/shim.log" "$BIN" connect --control https://203.0.113.2:8443 \
    --ca "$W/ctl/ca.pem" --user alice --server home --service iperf --listen 127.0.0.1:5301 >/dev/null
  HUSHGATE_PASSWORD="$PASSWORD" bg cli "$W/shim-us.log" "$BIN" connect --control https://203.0.113.2:8443 \
    --ca "$W/ctl/ca.pem" --user alice --server home-us --service iperf --listen 127.0.0.1:5302 >/dev/null
  wait_for "shim ready" 20 grep -q "^ready:" "$W/shim.log" || { cat "$W/shim.log" >&2; exit 1; }
  wait_for "shim (home-us) ready" 20 grep -q "^ready:" "$W/shim-us.log" || { cat "$W/shim-us.log" >&2; exit 1; }
  SHIM_PID=$(find_pid cli "listen 127.0.0.1:5301")
  wait_for "iperf3 servers" 5 bash -c "ip netns exec $P-edge ss -ltn | grep -q ':5203'"
}

start_wgo() { # NS IF PRIVKEY LISTENPORT PEERPUB ENDPOINT ALLOWED ADDR
  local n="$1" ifc="$2" key="$3" port="$4" peer="$5" ep="$6" allowed="$7" addr="$8"
  WG_PROCESS_FOREGROUND=1 bg "$n" "$W/$ifc.log" wireguard-go -f "$ifc" >/dev/null
  wait_for "wireguard-go $ifc" 10 ns "$n" ip link show "$ifc"
  echo "$key" >"$W/$ifc.key"
  ns "$n" wg set "$ifc" private-key "$W/$ifc.key" ${port:+listen-port "$port"} \
    peer "$peer" allowed-ips "$allowed" ${ep:+endpoint "$ep"} persistent-keepalive 25
  ns "$n" ip addr add "$addr" dev "$ifc"
  ns "$n" ip link set "$ifc" mtu 1420 up
  ns "$n" ip route add "$allowed" dev "$ifc"
}

# ---------------------------------------------------------------- measurements

# iperf3 PATH MODE [SECS]: prints Mbit/s (receiver side)
iperf() {
  local path="$1" mode="$2" secs="${3:-$SECS}" host port args=()
  case "$path" in
    hg) host=127.0.0.1; port=5301 ;;
    hgu) host=127.0.0.1; port=5302 ;;
    wg) host=203.0.113.193; port=5203 ;;
    plain) host=203.0.113.18; port=5202 ;;
  esac
  case "$mode" in
    1) ;; 1R) args=(-R) ;; 8) args=(-P 8) ;; 8R) args=(-P 8 -R) ;;
  esac
  local out="$W/iperf-$path-$mode.json"
  if ! ns cli timeout $((secs + 20)) iperf3 -c "$host" -p "$port" -t "$secs" -O 1 -J "${args[@]}" >"$out" 2>&1; then
    log "  iperf3 $path $mode failed: $(grep -o '"error":.*' "$out" | head -1)"
    echo 0; return 0
  fi
  python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print("%.0f" % (d["end"]["sum_received"]["bits_per_second"]/1e6))' "$out" 2>/dev/null || echo 0
}

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{ a[NR] = $1 } END { if (NR == 0) print 0; else print a[int((NR + 1) / 2)] }'; }
put() { echo "$1 $2" >>"$RES"; }
get() { awk -v k="$1" '$1 == k { v = $2 } END { print (v == "" ? "-" : v) }' "$RES"; }

throughput() { # throughput TAG
  local tag="$1" rep path mode v
  declare -A acc=()
  for rep in $(seq "$REPS"); do
    for mode in $MODES; do
      for path in hg wg plain; do
        [ "$path" = plain ] && plain_on
        v=$(iperf "$path" "$mode")
        [ "$path" = plain ] && plain_off
        acc[$path-$mode]="${acc[$path-$mode]:-} $v"
        log "  [$tag] rep $rep: $path $mode: $v Mbit/s"
      done
    done
  done
  for k in "${!acc[@]}"; do
    put "tput-$tag-$k" "$(echo "${acc[$k]}" | median)"
    put "tput-$tag-$k-all" "$(echo "${acc[$k]}" | sed 's/^ //; s/ /,/g')"
  done
}

access_time() {
  log "time to access: $ACCESS_RUNS sessions (already logged in)"
  HUSHGATE_PASSWORD="$PASSWORD" ns cli "$ACCESS" --control https://203.0.113.2:8443 --ca "$W/ctl/ca.pem" \
    --user alice --server home --service plex --runs "$ACCESS_RUNS" >"$W/access.log" 2>&1 || { tail -5 "$W/access.log" >&2; return 0; }
  local line; line=$(grep '^access_ms' "$W/access.log")
  log "  $line"
  put access-p50 "$(echo "$line" | awk '{ print $3 }')"
  put access-p99 "$(echo "$line" | awk '{ print $5 }')"
  put access-connect-p50 "$(echo "$line" | awk '{ print $11 }')"

  log "time to access with process start: $PROC_RUNS runs of hushgate connect"
  HUSHGATE_PASSWORD="$PASSWORD" ns cli python3 - "$BIN" "$W/ctl/ca.pem" "$PROC_RUNS" >"$W/proc-access.log" 2>&1 <<'EOF' || { tail -5 "$W/proc-access.log" >&2; return 0; }
import os, signal, socket, subprocess, sys, time
binp, ca, runs = sys.argv[1], sys.argv[2], int(sys.argv[3])
res = []
for i in range(runs + 2):
    port = 5400 + i % 50
    t0 = time.monotonic()
    p = subprocess.Popen([binp, "connect", "--control", "https://203.0.113.2:8443", "--ca", ca,
                          "--user", "alice", "--server", "home", "--service", "plex",
                          "--listen", "127.0.0.1:%d" % port],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    got = False
    while time.monotonic() - t0 < 20 and p.poll() is None:
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
        except OSError:
            time.sleep(0.0005); continue
        s.settimeout(10)
        try:
            s.sendall(b"GET /identity HTTP/1.1\r\nHost: media\r\nConnection: close\r\n\r\n")
            got = len(s.recv(1)) == 1
        except OSError:
            got = False
        s.close()
        if got: break
        time.sleep(0.0005)
    t1 = time.monotonic()
    p.send_signal(signal.SIGINT)
    try: p.wait(10)
    except subprocess.TimeoutExpired: p.kill(); p.wait()
    if not got: print("run", i, "failed"); continue
    if i >= 2: res.append((t1 - t0) * 1e3); print("run", i - 2, "ms %.2f" % res[-1])
res.sort()
pick = lambda q: res[min(len(res), max(1, -(-int(q * len(res)) // 100))) - 1]
print("proc_ms p50 %.2f p99 %.2f n %d" % (pick(50), pick(99), len(res)))
EOF
  line=$(grep '^proc_ms' "$W/proc-access.log")
  log "  $line"
  put proc-p50 "$(echo "$line" | awk '{ print $3 }')"
  put proc-p99 "$(echo "$line" | awk '{ print $5 }')"
  put proc-n "$(echo "$line" | awk '{ print $7 }')"
}

direct_time() {
  log "time to direct access: $ACCESS_RUNS direct admissions (already logged in), each revoked before the next"
  local s0 s1
  s0=$(direct_counts)
  HUSHGATE_PASSWORD="$PASSWORD" ns cli "$ACCESS" --direct --control https://203.0.113.2:8443 --ca "$W/ctl/ca.pem" \
    --user alice --server home --service plex --runs "$ACCESS_RUNS" >"$W/direct.log" 2>&1 || { tail -5 "$W/direct.log" >&2; return 0; }
  s1=$(direct_counts)
  local line; line=$(grep '^direct_ms' "$W/direct.log") ||
    { log "  access_time --direct printed no summary (an older build?); see $W/direct.log"; tail -5 "$W/direct.log" >&2; return 0; }
  log "  $line"
  log "  gateway's direct service before/after (accepted refused admitted_sources): $s0 / $s1"
  put direct-p50 "$(echo "$line" | awk '{ print $3 }')"
  put direct-p99 "$(echo "$line" | awk '{ print $5 }')"
  put direct-access-p50 "$(echo "$line" | awk '{ print $11 }')"
  put direct-n "$(echo "$line" | awk '{ print $13 }')"
  # Every timed connection should have been accepted by the gateway's
  # direct listener (not refused: the element was in place before the
  # answer), and no admission should be left behind.
  put direct-accepted "$(( $(echo "$s1" | cut -d' ' -f1) - $(echo "$s0" | cut -d' ' -f1) ))"
  put direct-refused "$(( $(echo "$s1" | cut -d' ' -f2) - $(echo "$s0" | cut -d' ' -f2) ))"
  put direct-left "$(echo "$s1" | cut -d' ' -f3)"
}

# Handshake initiations with a valid mac1 for key $1 (base64), 4096 of
# them with random ephemeral/static/timestamp fields, as flood pool records.
make_mac1_pool() {
  python3 - "$1" "$2" <<'EOF'
import base64, hashlib, os, struct, sys
pub = base64.b64decode(sys.argv[1]); out = open(sys.argv[2], "wb")
k = hashlib.blake2s(b"mac1----" + pub).digest()
for i in range(4096):
    m = struct.pack("<I", 1) + os.urandom(4) + os.urandom(32) + os.urandom(48) + os.urandom(28)
    m += hashlib.blake2s(m, digest_size=16, key=k).digest() + bytes(16)
    assert len(m) == 148
    out.write(struct.pack("<H", len(m)) + m)
EOF
}

# gw_counts NAME: "datagrams drops" of gateway NAME: datagrams its process
# received, and the sum of its user-space drop counters.
gw_counts() {
  ns edge "$BIN" gateway status --state "$W/$1" --json 2>/dev/null | python3 -c '
import json, sys
g = json.load(sys.stdin)["gateway"]
print(g["datagrams"], sum(v for v in g["drops"].values() if isinstance(v, int)))' 2>/dev/null || echo "0 0"
}
# direct_counts: "accepted refused admitted_sources" of the gateway's
# direct service.
direct_counts() {
  ns edge "$BIN" gateway status --state "$W/gw" --json 2>/dev/null | python3 -c '
import json, sys
d = json.load(sys.stdin)["direct"] or {}
print(d.get("accepted", 0), d.get("refused", 0), d.get("admitted_sources", 0))' 2>/dev/null || echo "0 0 0"
}
# kernel_drops: "packets bytes" the pre-filter of the gateway on UDP 51820
# dropped (the counter of its `tunnel` chain's drop rule). A packet here
# is what the kernel handles as one: the flooder's GSO batches stay whole
# over veth, so one packet can be up to 64 datagrams (see flood_run).
kernel_drops() {
  local n
  n=$(ns edge nft list chain inet hushgate_51820 tunnel | sed -n 's/.*counter packets \([0-9]*\) bytes \([0-9]*\).*/\1 \2/p' | head -1)
  echo "${n:-0 0}"
}

# flood_run TARGET KIND CONTROL [STREAM]: one flood during one-stream iperf3 (-R)
# (with STREAM=0: no stream, the flood alone);
# prints "mbps drops secs cpu_target flood_sent flood_cpu gw_datagrams
# kernel_packets gw_drops", where drops are datagrams dropped: by the
# gateway in user space (hgu), by the pre-filter (hgk: from its counter,
# see below) or 0 (wg); gw_datagrams the datagrams the gateway process
# received meanwhile (hgk, hgu: junk and the admitted shim's own; 0 for
# wg); kernel_packets the pre-filter counter's packets (hgk; 0 otherwise);
# gw_drops the gateway's user-space drops (hgk, hgu: for hgk, junk that got
# past the pre-filter; 0 for wg).
flood_run() {
  local target="$1" kind="$2" ctl="$3" stream="${4:-1}" dst pid path gw=""
  case "$target" in
    hgk) dst=203.0.113.18:51820; pid=$GW_PID; path=hg; gw=gw ;;
    hgu) dst=203.0.113.18:51840; pid=$GWU_PID; path=hgu; gw=gw-us ;;
    wg) dst=203.0.113.18:51830; pid=$WGE_PID; path=wg ;;
  esac
  local fargs=(--kind "$kind")
  case "$kind" in
    mac1) fargs=(--kind pool --pool "$W/mac1-$target.pool") ;;
  esac
  [ "$ctl" = 1 ] && control_on
  local g0="0 0" g1="0 0" k0="0 0" k1="0 0" c0 c1 mbps
  [ -n "$gw" ] && g0=$(gw_counts "$gw")
  [ "$target" = hgk ] && k0=$(kernel_drops)
  c0=$(cpu_of "$pid")
  if [ "$kind" = none ]; then
    echo "sent 0 secs $FLOOD_SECS sendmsg 0 cpu_s 0 dropped_overflow 0 bytes 0" >"$W/flood.out"
    sleep 0.5
    mbps=$(iperf "$path" 1R $((FLOOD_SECS - 1)))
    sleep 0.5
  else
    # With a stream, the flood lasts 1 s longer than FLOOD_SECS: iperf3
    # starts 0.5 s into it and runs FLOOD_SECS s (1 s omitted), so the
    # flood covers the whole measured window plus iperf3's connection set-up.
    local dur=$FLOOD_SECS
    [ "$stream" = 1 ] && dur=$((FLOOD_SECS + 1))
    ns atk "$FLOOD" --dst "$dst" "${fargs[@]}" --secs "$dur" --max "$FLOOD_MAX" >"$W/flood.out" 2>&1 &
    local fpid=$!
    if [ "$stream" = 1 ]; then
      sleep 0.5
      mbps=$(iperf "$path" 1R $((FLOOD_SECS - 1)))
    else
      mbps=0
    fi
    wait "$fpid" || true
  fi
  sleep 0.3
  c1=$(cpu_of "$pid")
  [ "$target" = hgk ] && k1=$(kernel_drops)
  [ -n "$gw" ] && g1=$(gw_counts "$gw")
  [ "$ctl" = 1 ] && control_off
  local sent fsecs fcpu fbytes drops dgrams udrops kpk=0
  read -r sent fsecs fcpu fbytes < <(awk '{ print $2, $4, $8, $12 }' "$W/flood.out")
  dgrams=$(( ${g1% *} - ${g0% *} ))
  udrops=$(( ${g1#* } - ${g0#* } ))
  case "$target" in
    hgk)
      # The counter counts the kernel's packets, and a GSO batch of the
      # flooder's stays one packet (one IPv4+UDP header, 28 bytes, then
      # all the datagrams' payloads) all the way here, so its packet count
      # can be 64 times too low. Its bytes are exact: the payload bytes it
      # dropped, divided by the flood's mean payload per datagram, give the
      # datagrams dropped (exact for the fixed-size floods).
      kpk=$(( ${k1% *} - ${k0% *} ))
      drops=$(awk -v b=$(( ${k1#* } - ${k0#* } )) -v p="$kpk" -v n="${sent:-0}" -v nb="${fbytes:-0}" \
        'BEGIN { if (nb > 0) printf "%.0f", (b - 28 * p) * n / nb; else print p }') ;;
    hgu) drops=$udrops ;;
    *) drops=0 ;;
  esac
  echo "$mbps $drops ${fsecs:-0} $(awk -v a="$c0" -v b="$c1" 'BEGIN { printf "%.2f", b - a }') ${sent:-0} ${fcpu:-0} $dgrams $kpk $udrops"
}

floods() {
  make_mac1_pool "$GW_PUB" "$W/mac1-hgk.pool"
  make_mac1_pool "$GWU_PUB" "$W/mac1-hgu.pool"
  make_mac1_pool "$WG_EDGE_PUB" "$W/mac1-wg.pool"
  local target kind ctl rep r
  for target in $FLOOD_TARGETS; do
    for rep in $(seq "$FLOOD_REPS"); do
      for kind in none random wg mac1; do
        for ctl in 0 1; do
          [ "$kind" = none ] && [ "$ctl" = 1 ] && continue
          r=$(flood_run "$target" "$kind" "$ctl")
          log "  flood $target $kind control=$ctl rep $rep: Mbit/s drops secs cpu sent flooder_cpu gw_datagrams kernel_packets gw_drops = $r"
          echo "$target $kind $ctl $r" >>"$W/floods.txt"
        done
        if [ "$kind" != none ]; then
          r=$(flood_run "$target" "$kind" 0 0)
          log "  flood $target $kind alone rep $rep: Mbit/s drops secs cpu sent flooder_cpu gw_datagrams kernel_packets gw_drops = $r"
          echo "$target $kind alone $r" >>"$W/floods.txt"
        fi
      done
    done
  done
}

# ---------------------------------------------------------------- report

report() {
  python3 - "$RES" "$W/floods.txt" "$MODES" <<'EOF'
import statistics, sys
res = {}
for l in open(sys.argv[1]):
    k, _, v = l.strip().partition(" ")
    res[k] = v
modes = sys.argv[3].split()
def f(k):
    v = res.get(k)
    try: return float(v)
    except (TypeError, ValueError): return None
def n(v, d=0):
    if v is None: return "-"
    return f"{v:,.{d}f}"
def ratio(a, b):
    return "-" if a is None or b in (None, 0) else f"{a / b:.2f}"
label = {"1": "1 stream, client->server", "1R": "1 stream, server->client (-R)",
         "8": "8 streams, client->server", "8R": "8 streams, server->client (-R)"}
out = []
out.append("#### Throughput (iperf3, Mbit/s at the receiver, median of runs)\n")
out.append("(a) goes through the gateway with the kernel pre-filter (the default).\n")
out.append("| RTT | streams | (a) hushgate connect | (b) wireguard-go | (c) plain TCP | (a)/(b) | (a)/(c) | runs (a); (b); (c) |")
out.append("| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |")
for tag, rtt in (("base", "~0 (veth)"), ("netem", "10 ms (user-space emulator)")):
    for m in modes:
        a, b, c = (f(f"tput-{tag}-{p}-{m}") for p in ("hg", "wg", "plain"))
        if a is None and b is None: continue
        runs = "; ".join(res.get(f"tput-{tag}-{p}-{m}-all", "-") for p in ("hg", "wg", "plain"))
        out.append(f"| {rtt} | {label[m]} | {n(a)} | {n(b)} | {n(c)} | {ratio(a, b)} | {ratio(a, c)} | {runs} |")
out.append("")
out.append("#### Time to access (ms)\n")
out.append("| what is timed | runs | p50 | p99 |")
out.append("| --- | ---: | ---: | ---: |")
out.append(f"| tunnel: `Session::connect` (token: already logged in) -> first byte of the upstream's HTTP answer through the local port (`hushgate/examples/access_time.rs`) | {res.get('access-n', '-')} | {res.get('access-p50', '-')} | {res.get('access-p99', '-')} |")
out.append(f"| of which `Session::connect` returned (access request acknowledged by the gateway + WireGuard handshake), p50 | | {res.get('access-connect-p50', '-')} | |")
out.append(f"| tunnel: `hushgate connect` process start (includes process start, password login with server-side hashing, access, handshake) -> first byte through the port | {res.get('proc-n', '-')} | {res.get('proc-p50', '-')} | {res.get('proc-p99', '-')} |")
out.append(f"| direct (firewall-only): `ControlClient::access_direct` (token: already logged in; new TLS connection per run) -> first byte of the upstream's HTTP answer over plain TCP at `direct_endpoint` (`access_time --direct`; revoked after each run) | {res.get('direct-n', '-')} | {res.get('direct-p50', '-')} | {res.get('direct-p99', '-')} |")
out.append(f"| of which `access_direct` returned (the gateway confirmed the pre-filter's element), p50 | | {res.get('direct-access-p50', '-')} | |")
out.append("| reference, **not measured here**: fwknop (single-packet authorization, then TCP) on this machine kind | | ~107 | |")
dp = f("direct-p50")
if dp is not None:
    out.append("")
    out.append(f"Direct access, target < 20 ms p50: **{'met' if dp < 20 else 'missed'}** ({dp:.2f} ms; fwknop's ~107 ms is a reference figure from an earlier measurement on this machine kind, not from this run). "
               f"The gateway's direct listener accepted {res.get('direct-accepted', '-')} connections and refused {res.get('direct-refused', '-')} during the runs; admitted direct sources left afterwards: {res.get('direct-left', '-')}.")
out.append("")
rows = {}
try:
    for l in open(sys.argv[2]):
        p = l.split()
        if len(p) != 12: continue
        t, k, c, mbps, drops, secs, cpu, sent, fcpu, dgrams, kpk, udrops = p
        rows.setdefault((t, k, c), []).append((float(mbps), int(drops), float(secs), float(cpu), int(sent), float(fcpu), int(dgrams), int(kpk), int(udrops)))
except FileNotFoundError:
    pass
MBPS, DROPS, SECS, CPU, SENT, FCPU, DGRAMS, KPK, UDROPS = range(9)
names = {"hgk": "hushgate gateway, kernel pre-filter (default)",
         "hgu": "hushgate gateway, user-space filter only (`--prefilter off`)",
         "wg": "wireguard-go"}
kinds = {"random": "random (1-1400 B)", "wg": "WireGuard-shaped (148 B init / 96 B data)", "mac1": "initiations with valid mac1"}
med = lambda xs: statistics.median(xs) if xs else None
def per_s(rs, i): return med([r[i] / r[SECS] for r in rs if r[SECS] > 0])
summary = {}
if rows:
    out.append("#### Cost of junk (one iperf3 stream server->client during a flood from 203.0.113.50; medians)\n")
    out.append("Drops counted: for the kernel pre-filter, datagrams from the counter of its drop rule (`nft list chain inet hushgate_51820 tunnel`; see the next table); for the user-space filter, the gateway's drop counters; not available for wireguard-go. The flood runs 1 s longer than the stream, covering its whole measured window.\n")
    out.append("| target | flood | datagrams/s sent (during stream) | stream Mbit/s | vs undisturbed | vs same flood dropped by nftables (control) | control Mbit/s | drops counted/s (during stream) | flood alone: datagrams/s sent | flood alone: drops counted/s | flood alone: target CPU s | flood alone: target CPU s per 1 M drops (gateway) or per 1 M sent (wireguard-go) |")
    out.append("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for t in ("hgk", "hgu", "wg"):
        base = rows.get((t, "none", "0"))
        if not base: continue
        bm = med([r[MBPS] for r in base])
        out.append(f"| {names[t]} | none (undisturbed) | 0 | {n(bm)} | 1.00 | | | | | | | |")
        for k in ("random", "wg", "mac1"):
            on, cl = rows.get((t, k, "0")), rows.get((t, k, "1"))
            if not on: continue
            m = med([r[MBPS] for r in on]); cm = med([r[MBPS] for r in cl]) if cl else None
            summary.setdefault(t, []).append((m / bm if bm else None, m / cm if cm else None))
            drops = per_s(on, DROPS) if t != "wg" else None
            al = rows.get((t, k, "alone")) or []
            adrops = per_s(al, DROPS) if al and t != "wg" else None
            acpu = med([r[CPU] for r in al])
            work = DROPS if t != "wg" else SENT
            per_m = med([r[CPU] / (r[work] / 1e6) for r in al if r[work] > 0])
            out.append(f"| {names[t]} | {kinds[k]} | {n(per_s(on, SENT))} | {n(m)} | {ratio(m, bm)} | {ratio(m, cm)} | {n(cm)} | {n(drops) if drops is not None else 'n/a'} | {n(per_s(al, SENT))} | {n(adrops) if adrops is not None else 'n/a'} | {n(acpu, 2)} | {n(per_m, 3)} |")
    out.append("")
    for t in ("hgk", "hgu"):
        sm = summary.get(t)
        if not sm: continue
        vc = [c for _, c in sm if c is not None]; vu = [u for u, _ in sm if u is not None]
        span = lambda v: "-" if not v else (f"{min(v):.2f}" if min(v) == max(v) else f"{min(v):.2f}-{max(v):.2f}")
        verdict = "" if not vc else (" (**met**)" if min(vc) >= 0.9 else " (**missed**)")
        out.append(f"- {names[t]}: the authorized stream keeps {span(vc)} of the nftables-dropped control{verdict}, {span(vu)} of undisturbed (target >= 0.90 of the control).")
    out.append("")
    krows = [(k, rows.get(("hgk", k, "alone"))) for k in ("random", "wg", "mac1")]
    krows = [(k, al) for k, al in krows if al]
    if krows:
        out.append("#### Kernel pre-filter: junk dropped before the gateway process (flood alone, no stream; medians)\n")
        out.append("| flood | datagrams/s sent | datagrams/s dropped by the pre-filter | dropped / sent | counter packets/s (GSO batches as the kernel sees them) | junk datagrams that reached the gateway process (its user-space drop counters, largest of the runs) | all datagrams the gateway process received (status `gateway.datagrams`, largest of the runs) | gateway CPU s | gateway CPU s per 1 M drops |")
        out.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for k, al in krows:
            share = med([r[DROPS] / r[SENT] for r in al if r[SENT] > 0])
            per_m = med([r[CPU] / (r[DROPS] / 1e6) for r in al if r[DROPS] > 0])
            out.append(f"| {kinds[k]} | {n(per_s(al, SENT))} | {n(per_s(al, DROPS))} | {n(share, 3)} | {n(per_s(al, KPK))} | {max(r[UDROPS] for r in al)} | {max(r[DGRAMS] for r in al)} | {n(med([r[CPU] for r in al]), 2)} | {n(per_m, 3)} |")
        out.append("")
        out.append("The flooder sends GSO batches (up to 64 equal datagrams per `sendmsg`) and over veth each batch stays one packet up to the pre-filter, so the drop rule's `counter packets` counts batches, not datagrams. Datagrams dropped are computed from the counter's bytes: (bytes - 28 x packets) is the payload it dropped (one IPv4 + UDP header per packet), divided by the flood's mean payload per datagram (exact for the fixed-size floods, an estimate for the random sizes). dropped / sent near 1.0 means the whole flood stopped at the pre-filter.")
        out.append("")
        out.append("The pre-filter's own cost is kernel softirq time on whichever CPU receives the packets; it is not charged to the gateway process and is not in these columns. The datagrams the gateway received without dropping them are the admitted shim's own (keepalives, renewals), not the flood.")
        out.append("")
print("\n".join(out))
EOF
}

# ---------------------------------------------------------------- main

log "building the topology ($P)"
build_topology
setup_world
log "world up: gateway pid $GW_PID key $GW_PUB (pre-filter, direct), gateway pid $GWU_PID key $GWU_PUB (--prefilter off), wireguard-go pids $WGE_PID/$WGC_PID, shim pid $SHIM_PID"
RSS0=$(awk '/VmRSS/ { print $2 }' "/proc/$GW_PID/status")
put gw-rss-kib "$RSS0"

tid_of() { # tid_of PID THREADNAME
  local t
  for t in /proc/"$1"/task/*; do
    [ "$(cat "$t/comm" 2>/dev/null)" = "${2:0:15}" ] && { basename "$t"; return 0; }
  done
  return 1
}
if [ -n "${PROFILE:-}" ]; then
  need perf "apt-get install linux-perf"
  GW_TID=$(tid_of "$GW_PID" hushgate-datapath)
  SHIM_TID=$(tid_of "$SHIM_PID" hushgate-shim-data)
  for mode in 1R 1; do
    perf record -q -g -t "$GW_TID" -o "$W/perf-gw-$mode.data" -- sleep 6 >/dev/null 2>&1 &
    p1=$!
    perf record -q -g -t "$SHIM_TID" -o "$W/perf-shim-$mode.data" -- sleep 6 >/dev/null 2>&1 &
    p2=$!
    g0=$(awk '{ print $14 + $15 }' "/proc/$GW_PID/task/$GW_TID/stat"); s0=$(awk '{ print $14 + $15 }' "/proc/$SHIM_PID/task/$SHIM_TID/stat")
    v=$(iperf hg "$mode" 8)
    g1=$(awk '{ print $14 + $15 }' "/proc/$GW_PID/task/$GW_TID/stat"); s1=$(awk '{ print $14 + $15 }' "/proc/$SHIM_PID/task/$SHIM_TID/stat")
    wait "$p1" "$p2" || true
    log "profile, 1 stream $mode: $v Mbit/s; CPU over ~9 s: gateway data path $(( g1 - g0 )) ticks, shim data path $(( s1 - s0 )) ticks (100/s)"
    for who in gw shim; do
      perf report -i "$W/perf-$who-$mode.data" --no-children --percent-limit 0.7 --stdio 2>/dev/null | grep -v '^$' | head -120 >"$W/perf-$who-$mode.txt"
      perf report -i "$W/perf-$who-$mode.data" --no-children --sort dso,sym -g none --percent-limit 0.5 --stdio 2>/dev/null | grep -v '^#' | grep -v '^$' | head -40 >"$W/perf-$who-$mode-flat.txt"
    done
  done
  echo "profiles in $W (perf-*.txt)"; KEEP_LOGS=1
  exit 0
fi

if ! skip tput; then
  log "throughput, no added delay"
  throughput base
fi
if [ "$NETEM" = 1 ] && ! skip netem; then
  log "throughput, 10 ms round trip (the emulator, 5 ms each way)"
  netem_on
  throughput netem
  netem_off
fi
if ! skip access; then access_time; put access-n "$ACCESS_RUNS"; fi
if ! skip direct; then direct_time; fi
if ! skip flood; then log "floods"; floods; fi
ISSUE6=0
for part in tput netem access direct flood; do skip "$part" || ISSUE6=1; done

# Issue 12 (bench/inet.sh).
T12=$(date +%s)
LOAD12="$(cut -d' ' -f1-3 /proc/loadavg)"
ISSUE12=0
if ! skip ceiling; then log "the emulator's ceiling"; emu_ceiling; ISSUE12=1; fi
if ! skip inet; then
  case " $INET_PATHS " in *" hgwg "*) inet_setup ;; esac
  inet_matrix; ISSUE12=1
fi
if ! skip players; then players; ISSUE12=1; fi
DUR12=$(( $(date +%s) - T12 ))

# write_section HEADING NOTES_HEADING FILE: replaces the section HEADING
# of docs/benchmarks.md by FILE, keeping hand-written notes under
# NOTES_HEADING if present.
write_section() {
  python3 - "$ROOT/docs/benchmarks.md" "$1" "$2" "$3" <<'EOF'
import sys
doc, head, notes_head, sec = sys.argv[1], sys.argv[2], sys.argv[3], open(sys.argv[4]).read().rstrip() + "\n"
text = open(doc).read()
i = text.find("\n" + head + "\n")
if i < 0:
    text = text.rstrip() + "\n\n" + sec
else:
    j = text.find("\n## ", i + 1 + len(head))
    rest = text[j:] if j >= 0 else ""
    old = text[i + 1: j if j >= 0 else len(text)]
    k = old.find("\n" + notes_head)
    notes = old[k:].rstrip() + "\n" if k >= 0 else ""
    text = text[:i + 1] + sec + notes + (rest if rest.startswith("\n") else rest)
open(doc, "w").write(text)
EOF
  log "wrote the section '$1' of docs/benchmarks.md"
}
MACHINE="$(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), Linux $(uname -r)"
BUILD="${CARGO_TARGET_DIR:+CARGO_TARGET_DIR=$CARGO_TARGET_DIR }cargo build --release -p hushgate --bin hushgate --example flood --example access_time -p hushgate-netem"

if [ "$ISSUE6" = 1 ]; then
  TABLE=$(report)
  echo
  echo "$TABLE"
  if [ -z "${NO_DOC:-}" ]; then
    {
      echo "## Side by side (issue 6)"
      echo
      echo '```sh'
      echo "$BUILD"
      echo "$CMDLINE"
      echo '```'
      echo
      echo "Machine: $MACHINE; load average at the start $(cut -d' ' -f1-3 /proc/loadavg) (shared with other work: expect noise). Run of $(date -u +%Y-%m-%dT%H:%MZ); iperf3 ${SECS} s per run (1 s omitted), $REPS runs per figure, runs interleaved across paths; floods ${FLOOD_SECS} s (1 s more with a stream; at most $FLOOD_MAX datagrams) each, $FLOOD_REPS runs, targets $FLOOD_TARGETS; direct and tunnel access $ACCESS_RUNS runs each. Gateway RSS at start: $((RSS0 / 1024)) MiB. The 10 ms round trip is the user-space emulator's (tools/netem; this kernel has no netem)."
      echo
      echo "$TABLE"
    } >"$W/section.md"
    write_section "## Side by side (issue 6)" "### Notes (issue 6)" "$W/section.md"
  fi
fi
if [ "$ISSUE12" = 1 ]; then
  TABLE12=$(inet_report)
  echo
  echo "$TABLE12"
  if [ -z "${NO_DOC:-}" ]; then
    {
      echo "## Internet conditions (issue 12)"
      echo
      echo '```sh'
      echo "$BUILD"
      echo "$CMDLINE"
      echo '```'
      echo
      echo "Machine: $MACHINE; load average when this part started $LOAD12, at its end $(cut -d' ' -f1-3 /proc/loadavg) (the machine is shared with other work: expect noise). Run of $(date -u +%Y-%m-%dT%H:%MZ), this part took $((DUR12 / 60)) min. **Delay, loss and the bottleneck are emulated in user space** (tools/netem, a TUN router hop in the inet namespace; this kernel has no netem): loss and delay in both directions, the round trip split evenly; seed $INET_SEED. iperf3 $INET_SECS s per run after $INET_OMIT s omitted, $INET_REPS runs per figure, runs interleaved across paths; bottleneck $INET_BN_RATE each way at a $INET_BN_RTT ms round trip, shallow queue $INET_SHALLOW, deep queue $INET_DEEP (of the rate)."
      echo
      echo "$TABLE12"
    } >"$W/section12.md"
    write_section "## Internet conditions (issue 12)" "### Notes (issue 12)" "$W/section12.md"
  fi
fi
