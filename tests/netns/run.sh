#!/usr/bin/env bash
# The netns harness: every claim of the design, proven by real processes
# over real (namespaced) networks. Run as root:
#
#   tests/netns/run.sh [SCENARIO...]      (default: all; e.g. `tests/netns/run.sh 1 2`)
#
# Topology (documentation address ranges only; they exist only inside the
# namespaces this script makes, and it removes them on exit, also on
# failure):
#
#   ctl  203.0.113.2  ─┐                               ┌─ home 203.0.113.18 ─ edge 192.0.2.2
#   (control plane)    │                               │  (router: forwards     (gateway on :51820,
#                      ├── inet (the "Internet") ──────┤   UDP 51820 and the     direct service on
#                      │                               │   direct TCP 32401)     TCP 32401, media on
#                      │                               │                         127.0.0.1:32400)
#   atk  203.0.113.50 ─┘                               └─ cnat 203.0.113.34 ─ cli 198.51.100.2
#   (attacker)                                            (client's NAT)        (hushgate connect)
#
# IPv6: every link also has a 2001:db8:N::/64; the client and the edge
# host have routed global addresses (no NAT), and scenario 9 uses them.
#
# Scenario 16 deploys as README and deploy/ say, on two more hosts of
# their own: dctl 203.0.113.66 (control plane) and dgw 203.0.113.82
# (gateway with its media server), both on the "Internet".

#
# The gateways keep their kernel pre-filter (nftables table
# inet hushgate_PORT in the edge namespace) as they do by default; scenarios
# 10-14 check it and the direct (firewall-only) service. A third gateway
# (server homefh, UDP 51822, IPv6) binds on the first handshake.
#
# Scenario 18 runs three control plane replicas in ctl, on 203.0.113.3-5
# (addresses it adds), on one PostgreSQL server it starts there (Unix
# socket only), with a gateway on UDP 51828 (the home router gets a rule
# forwarding it).
#
# Scenario 15 puts the Internet emulator (tools/netem) in inet: while it
# runs, everything between the client side (i-cnat) and the home side
# (i-home) goes through its TUN devices (tests/netns/lib.sh, emu_rules).
set -euo pipefail
# With pipefail, `producer | grep -q X` fails whenever grep exits at its
# match while the producer still writes (SIGPIPE, or EPIPE for Rust's
# line-buffered stdout): a failure that depends on scheduling. Checks on a
# command's output read it whole first: grep -q X <<<"$(producer)".

HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
# shellcheck source=tests/netns/lib.sh
. "$HERE/lib.sh"
BIN="${HUSHGATE_BIN:-$ROOT/target/debug/hushgate}"
NETEM_BIN="${NETEM_BIN:-$(dirname "$BIN")/hushgate-netem}"
P="hg$$"
W="$(mktemp -d /tmp/hushgate-netns.XXXXXX)"
# `hushgate connect` keeps a device credential under XDG_STATE_HOME: one
# left in root's home by an earlier run names a device this run's control
# plane never saw.
export XDG_STATE_HOME="$W/xdg-state"
NSES=(inet ctl home edge cnat cli atk dctl dgw mrt mgw isp)
PASSED=0
FAILED=0
FAILED_NAMES=()

T0=$(date +%s.%N)
log() { printf '[%6ss] %s\n' "$(since "$T0")" "$*"; }

cleanup() {
  set +e
  stop_postgres
  # Every process we started runs inside one of our namespaces.
  for n in "${NSES[@]}"; do
    for pid in $(ip netns pids "$P-$n" 2>/dev/null); do kill -9 "$pid" 2>/dev/null; done
  done
  sleep 0.2
  for n in "${NSES[@]}"; do ip netns del "$P-$n" 2>/dev/null; done
  rm -f /var/run/wireguard/"$P"*.sock
  rm -rf "$W-pg"
  if [ -n "${KEEP_LOGS:-}" ]; then echo "logs kept in $W"; else rm -rf "$W"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

need() { command -v "$1" >/dev/null 2>&1 || { echo "netns harness: '$1' is missing ($2)" >&2; exit 2; }; }
[ "$(id -u)" = 0 ] || { echo "netns harness: must run as root (it creates network namespaces)" >&2; exit 2; }
need ip "apt-get install iproute2"
need nft "apt-get install nftables"
need tcpdump "apt-get install tcpdump"
need wg "apt-get install wireguard-tools"
need wireguard-go "apt-get install wireguard-go"
need nmap "apt-get install nmap"
need conntrack "apt-get install conntrack"
need curl "apt-get install curl"
need python3 "apt-get install python3"
need ffmpeg "apt-get install ffmpeg"
need ffprobe "apt-get install ffmpeg"
need miniupnpd "apt-get install miniupnpd-nftables"
[ -x "$BIN" ] || { echo "netns harness: $BIN is not built (cargo build -p hushgate)" >&2; exit 2; }
[ -x "$NETEM_BIN" ] || { echo "netns harness: $NETEM_BIN is not built (cargo build -p hushgate-netem)" >&2; exit 2; }
[ -c /dev/net/tun ] || { echo "netns harness: /dev/net/tun is missing (needed by wireguard-go)" >&2; exit 2; }

# Runs a command in a namespace in the background; prints its pid.

link() { # link NS_A IF_A ADDR4_A ADDR6_A NS_B IF_B ADDR4_B ADDR6_B
  local a="$1" ia="$2" a4="$3" a6="$4" b="$5" ib="$6" b4="$7" b6="$8"
  ip link add "$P$ia" type veth peer name "$P$ib"
  ip link set "$P$ia" netns "$P-$a" name "$ia"
  ip link set "$P$ib" netns "$P-$b" name "$ib"
  ns "$a" ip addr add "$a4" dev "$ia"; ns "$a" ip -6 addr add "$a6" dev "$ia" nodad
  ns "$b" ip addr add "$b4" dev "$ib"; ns "$b" ip -6 addr add "$b6" dev "$ib" nodad
  ns "$a" ip link set "$ia" up; ns "$b" ip link set "$ib" up
}

build_topology() {
  for n in "${NSES[@]}"; do
    ip netns add "$P-$n"
    ns "$n" ip link set lo up
    ns "$n" sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0
  done
  for n in inet home cnat; do
    ns "$n" sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1
  done
  link inet i-ctl 203.0.113.1/28 2001:db8:1::1/64  ctl eth0 203.0.113.2/28 2001:db8:1::2/64
  link inet i-home 203.0.113.17/28 2001:db8:2::1/64 home wan 203.0.113.18/28 2001:db8:2::2/64
  link inet i-cnat 203.0.113.33/28 2001:db8:3::1/64 cnat wan 203.0.113.34/28 2001:db8:3::2/64
  link inet i-atk 203.0.113.49/28 2001:db8:4::1/64  atk eth0 203.0.113.50/28 2001:db8:4::2/64
  link inet i-dctl 203.0.113.65/28 2001:db8:5::1/64 dctl eth0 203.0.113.66/28 2001:db8:5::2/64
  link inet i-dgw 203.0.113.81/28 2001:db8:6::1/64  dgw eth0 203.0.113.82/28 2001:db8:6::2/64
  link home lan 192.0.2.1/24 2001:db8:10::1/64      edge eth0 192.0.2.2/24 2001:db8:10::2/64
  link cnat lan 198.51.100.1/24 2001:db8:20::1/64   cli eth0 198.51.100.2/24 2001:db8:20::2/64
  # Scenario 17: a home router running miniupnpd (mrt) with the gateway's
  # host (mgw) behind it; nothing is forwarded by hand there.
  link inet i-mrt 203.0.113.97/28 2001:db8:7::1/64  mrt wan 203.0.113.98/28 2001:db8:7::2/64
  link mrt lan 192.0.2.1/24 2001:db8:30::1/64       mgw eth0 192.0.2.2/24 2001:db8:30::2/64
  # ... and, for its double-NAT case, a provider's NAT (isp) in front of
  # a second WAN link of that router (wan2, 198.51.100.130).
  link inet i-isp 203.0.113.113/28 2001:db8:8::1/64 isp wan 203.0.113.114/28 2001:db8:8::2/64
  link isp lan 198.51.100.129/25 2001:db8:31::1/64  mrt wan2 198.51.100.130/25 2001:db8:31::2/64
  ns isp sysctl -qw net.ipv4.ip_forward=1
  ns isp ip route add default via 203.0.113.113
  ns mrt sysctl -qw net.ipv4.ip_forward=1
  ns mrt ip route add default via 203.0.113.97
  ns mgw ip route add default via 192.0.2.1
  ns cnat ip addr add 203.0.113.35/28 dev wan
  ns ctl ip route add default via 203.0.113.1;   ns ctl ip -6 route add default via 2001:db8:1::1
  ns atk ip route add default via 203.0.113.49;  ns atk ip -6 route add default via 2001:db8:4::1
  ns dctl ip route add default via 203.0.113.65; ns dctl ip -6 route add default via 2001:db8:5::1
  ns dgw ip route add default via 203.0.113.81;  ns dgw ip -6 route add default via 2001:db8:6::1
  ns home ip route add default via 203.0.113.17; ns home ip -6 route add default via 2001:db8:2::1
  ns cnat ip route add default via 203.0.113.33; ns cnat ip -6 route add default via 2001:db8:3::1
  ns edge ip route add default via 192.0.2.1;    ns edge ip -6 route add default via 2001:db8:10::1
  ns cli ip route add default via 198.51.100.1;  ns cli ip -6 route add default via 2001:db8:20::1
  ns inet ip -6 route add 2001:db8:10::/64 via 2001:db8:2::2
  ns inet ip -6 route add 2001:db8:20::/64 via 2001:db8:3::2
  # The emulator's policy routing (IPv4), inactive until it runs.
  emu_rules inet i-cnat 203.0.113.32/28 i-home 203.0.113.16/28

  # The home router: forwards UDP 51820 (IPv4, DNAT), TCP 32401 (the
  # gateway's direct service, IPv4, DNAT) and UDP 51821 (IPv6, routed) to
  # the edge host and nothing else; its own address answers
  # nothing at all (drop, not reject: no RST, no ICMP).
  ns home nft -f - <<'EOF'
table inet home {
  chain pre {
    type nat hook prerouting priority dstnat;
    iifname "wan" ip daddr 203.0.113.18 udp dport 51820 dnat ip to 192.0.2.2:51820
    iifname "wan" ip daddr 203.0.113.18 tcp dport 32401 dnat ip to 192.0.2.2:32401
  }
  chain post {
    type nat hook postrouting priority srcnat;
    oifname "wan" ip saddr 192.0.2.0/24 masquerade
  }
  chain input {
    type filter hook input priority filter; policy accept;
    iifname "wan" ct state established,related accept
    # Neighbour discovery with the ISP's router (IPv6's ARP): on-link only.
    iifname "wan" icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } ip6 hoplimit 255 accept
    iifname "wan" drop
  }
  chain forward {
    type filter hook forward priority filter; policy drop;
    ct state established,related accept
    iifname "lan" accept
    iifname "wan" ip daddr 192.0.2.2 udp dport 51820 accept
    iifname "wan" ip daddr 192.0.2.2 tcp dport 32401 accept
    iifname "wan" ip6 daddr 2001:db8:10::2 udp dport { 51821, 51822 } accept
  }
  chain output {
    type filter hook output priority filter; policy accept;
    oifname "wan" icmp type destination-unreachable drop
    oifname "wan" icmpv6 type destination-unreachable drop
  }
}
EOF
  # The client's NAT (source address switchable for scenario 8).
  ns cnat nft -f - <<'EOF'
table ip cnat {
  chain post {
    type nat hook postrouting priority srcnat;
    oifname "wan" ip saddr 198.51.100.0/24 snat to 203.0.113.34
  }
}
EOF
  # The miniupnpd router (scenario 17): NAT and a closed firewall, with
  # the empty chains miniupnpd fills (its nftables backend's layout: table
  # inet miniupnpd, chains miniupnpd, prerouting_miniupnpd and
  # postrouting_miniupnpd). Its own address answers nothing but what it
  # asked for (STUN), like the home router above.
  ns mrt nft -f - <<'EOF'
table inet miniupnpd {
  chain forward {
    type filter hook forward priority filter; policy drop;
    ct state established,related accept
    iifname "lan" accept
    jump miniupnpd
  }
  chain miniupnpd {
  }
  chain prerouting {
    type nat hook prerouting priority dstnat; policy accept;
    jump prerouting_miniupnpd
  }
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    jump postrouting_miniupnpd
    oifname { "wan", "wan2" } ip saddr 192.0.2.0/24 masquerade
  }
  chain prerouting_miniupnpd {
  }
  chain postrouting_miniupnpd {
  }
  chain input {
    type filter hook input priority filter; policy accept;
    iifname { "wan", "wan2" } ct state established,related accept
    iifname { "wan", "wan2" } drop
  }
  chain output {
    type filter hook output priority filter; policy accept;
    oifname { "wan", "wan2" } icmp type destination-unreachable drop
  }
}
EOF
  # The provider's NAT in front of wan2: the router's address there is
  # the provider's, and nothing from the Internet reaches it unasked.
  ns isp nft -f - <<'EOF'
table inet isp {
  chain post {
    type nat hook postrouting priority srcnat;
    oifname "wan" ip saddr 198.51.100.128/25 masquerade
  }
  chain forward {
    type filter hook forward priority filter; policy drop;
    ct state established,related accept
    iifname "lan" accept
  }
  chain input {
    type filter hook input priority filter; policy accept;
    iifname "wan" ct state established,related accept
    iifname "wan" drop
  }
  chain output {
    type filter hook output priority filter; policy accept;
    oifname "wan" icmp type destination-unreachable drop
  }
}
EOF
}

# ---------------------------------------------------------------- services

FILE_MIB=24
start_media() {
  mkdir -p "$W/media"
  head -c $((FILE_MIB << 20)) /dev/urandom >"$W/media/file.bin"
  echo '<MediaContainer machineIdentifier="netns-harness"/>' >"$W/media/identity"
  SHA=$(sha256sum "$W/media/file.bin" | cut -d' ' -f1)
  MEDIA_PID=$(bg edge "$W/media.log" python3 -m http.server 32400 --bind 127.0.0.1 --directory "$W/media")
}

# CONTROL_DB=postgres: the world's control plane keeps its state in a
# PostgreSQL database (started by the harness, see start_postgres) instead
# of SQLite, for scenario 19's PostgreSQL restarts (not with scenario 18,
# which starts and stops that PostgreSQL itself).
CONTROL_DB="${CONTROL_DB:-sqlite}"
start_control() {
  local db=()
  [ "$CONTROL_DB" = postgres ] && db=(env "HUSHGATE_DATABASE=host=$PG_SOCK user=hushgate dbname=world")
  CTL_PID=$(bg ctl "$W/control.log" "${db[@]}" "$BIN" control --listen "[::]:8443" --state "$W/ctl" \
    --san 203.0.113.2 --san 2001:db8:1::2 --admission-ttl 10 --login-rate 1000 \
    --metrics-listen 203.0.113.2:9102 --metrics-not-loopback)
  echo "$CTL_PID" >"$W/ctl.pid"
  wait_for "control plane" 10 test -s "$W/ctl/control-url"
  wait_for "control plane HTTPS" 10 ns ctl curl -sf --cacert "$W/ctl/ca.pem" https://203.0.113.2:8443/v1/health -o /dev/null
}

admin() { ns ctl "$BIN" admin --state "$W/ctl" "$@"; }

# PostgreSQL for the control plane replicas (scenario 18), from Debian's
# packages (not on PATH): initdb in $W-pg, the server in namespace NS,
# listening only on a Unix socket in $W-pg/sock (no TCP port, so runs side
# by side never clash; a Unix socket reaches across namespaces). It
# refuses to run as root: it runs as nobody, and its folder is nobody's
# ($W is root's alone). Stopped by stop_postgres, or on exit by cleanup.
PG_BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
PG_SOCK="$W-pg/sock"
start_postgres() { # start_postgres NS (again after stop_postgres: the same data)
  [ -x "$PG_BIN/initdb" ] || { echo "PostgreSQL is missing: apt-get install postgresql" >&2; return 1; }
  local nobody=(setpriv --reuid=nobody --regid=nogroup --clear-groups)
  if [ ! -d "$W-pg/data" ]; then
    mkdir -p "$W-pg/data" "$PG_SOCK"
    chmod 755 "$W-pg"
    chown nobody:nogroup "$W-pg/data" "$PG_SOCK"
    (cd "$W-pg" && "${nobody[@]}" "$PG_BIN/initdb" -D "$W-pg/data" -U hushgate --auth=trust -E UTF8 --no-sync >"$W/initdb.log" 2>&1) \
      || { cat "$W/initdb.log" >&2; return 1; }
  fi
  (cd "$W-pg" && bg "$1" "$W/postgres.log" "${nobody[@]}" "$PG_BIN/postgres" -D "$W-pg/data" \
    -k "$PG_SOCK" -c listen_addresses= -c max_connections=200 >/dev/null)
  wait_for "PostgreSQL" 30 "$PG_BIN/pg_isready" -q -h "$PG_SOCK" -U hushgate -d postgres
}
stop_postgres() {
  local pid
  pid=$(head -1 "$W-pg/data/postmaster.pid" 2>/dev/null) || return 0
  kill -INT "$pid" 2>/dev/null || return 0
  wait_for "PostgreSQL to stop" 10 bash -c "! kill -0 $pid 2>/dev/null"
}

start_gateway() { # start_gateway NAME STATE LISTEN ENDPOINT [TOKEN [MORE FLAGS...]]
  local name="$1" state="$2" listen="$3" endpoint="$4" token="${5:-}"
  shift 5 2>/dev/null || shift $#
  HUSHGATE_ENROLL_TOKEN="$token" bg edge "$W/$name.log" "$BIN" gateway \
    --control https://203.0.113.2:8443 --ca "$W/ctl/ca.pem" --state "$state" \
    --listen-udp "$listen" --public-endpoint "$endpoint" \
    --service plex=32400:127.0.0.1:32400 "$@"
}
# The IPv4 gateway (server home) also offers the media server directly.
DIRECT=(--direct plex=32401:127.0.0.1:32400 --prefilter required --metrics-listen 127.0.0.1:9101)
# Each scenario runs in a subshell, so the gateway's current pid (it may
# have been restarted by an earlier scenario) is kept in a file too.
start_gw4() {
  local pid
  pid=$(start_gateway "$1" "$W/gw" 0.0.0.0:51820 203.0.113.18:51820 "${2:-}" "${DIRECT[@]}")
  echo "$pid" >"$W/gw.pid"
  echo "$pid"
}

wait_gateway_synced() { wait_for "gateway $1 in sync" 15 grep -q "in sync" "$W/$1.log"; }


PASSWORD="netns-$$-password"
setup_world() {
  if [ "$CONTROL_DB" = postgres ]; then
    start_postgres ctl
    ns ctl "$PG_BIN/createdb" -h "$PG_SOCK" -U hushgate --owner hushgate world
  fi
  start_media
  start_control
  echo "$PASSWORD" | admin user add alice >/dev/null
  echo "$PASSWORD" | admin user add bob >/dev/null
  TOKEN=$(admin server add home --binding exact --ttl 15 | tail -1)
  TOKEN6=$(admin server add home6 --binding exact --ttl 60 | tail -1)
  TOKENFH=$(admin server add homefh --binding first-handshake --ttl 60 | tail -1)
  admin grant add alice homefh >/dev/null
  admin grant add alice home >/dev/null
  admin grant add alice home6 >/dev/null
  admin grant add bob home >/dev/null
  echo "$PASSWORD" | admin user add carol >/dev/null
  admin grant add carol home --direct >/dev/null
  start_gw4 gw "$TOKEN" >/dev/null
  # A second gateway for server home6, reached over IPv6 (scenario 9).
  GW6_PID=$(start_gateway gw6 "$W/gw6" "[::]:51821" "[2001:db8:10::2]:51821" "$TOKEN6")
  # A third, for server homefh (binding first-handshake, scenario 14).
  start_gateway gwfh "$W/gwfh" "[::]:51822" "[2001:db8:10::2]:51822" "$TOKENFH" >/dev/null
  wait_gateway_synced gw
  wait_gateway_synced gw6
  wait_gateway_synced gwfh
}

# The client shim in the client's namespace; its port for the player is
# 127.0.0.1:$1 there.
start_shim() { # start_shim PORT LOGNAME [USER] [CONTROL] [SERVER] [CA]
  local port="$1" name="$2" user="${3:-alice}" ctl="${4:-https://203.0.113.2:8443}" server="${5:-home}"
  local ca="${6:-$W/ctl/ca.pem}"
  local pid
  pid=$(HUSHGATE_PASSWORD="$PASSWORD" bg cli "$W/$name.log" "$BIN" connect --control "$ctl" \
    --ca "$ca" --user "$user" --server "$server" --listen "127.0.0.1:$port")
  wait_for "shim $name ready" 20 grep -q "^ready:" "$W/$name.log" || { cat "$W/$name.log" >&2; return 1; }
  echo "$pid"
}

fetch() { # fetch PORT OUTFILE [curl args...]: downloads the file through the shim
  local port="$1" out="$2"; shift 2
  ns cli curl -sS --max-time 60 "$@" -o "$out" "http://127.0.0.1:$port/file.bin"
}

# A player in the client's namespace that downloads the file slowly (64 KiB
# every 50 ms) from HOST:PORT. Exits 1 when the connection fails (reset,
# or 10 s without data), 3 at a clean end of the file. Its receive buffer
# is small (64 KiB), so what it reads after a reset is at most ~50 ms of
# data already buffered, and the time it ends is when the flow was cut.
# With PROGRESS, it writes how many bytes it has read to that file as it
# goes.
slow_player() { # slow_player HOST PORT [PROGRESS]
  ns cli python3 - "$1" "$2" "${3:-}" <<'EOF'
import os, socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
s.connect((sys.argv[1], int(sys.argv[2])))
s.sendall(b"GET /file.bin HTTP/1.1\r\nHost: media\r\n\r\n")
s.settimeout(10)
got = 0
try:
    while True:
        b = s.recv(65536)
        if not b:
            print("eof after", got); sys.exit(3)
        got += len(b)
        if sys.argv[3]:
            with open(sys.argv[3] + ".tmp", "w") as f:
                f.write(str(got))
            os.replace(sys.argv[3] + ".tmp", sys.argv[3])
        time.sleep(0.05)
except OSError as e:
    print("ended after", got, "bytes:", e); sys.exit(1)
EOF
}

check_sha() { [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$SHA" ]; }

# Captures everything on the attacker's link; `stop_capture` prints how
# many packets came from the home network's public addresses. As a check
# that the capture itself works, it fails unless it also saw the
# attacker's own probes.
start_capture() {
  # Both files go first: a "listening on" left in the log by the previous
  # capture would let this one start late.
  rm -f "$W/capture.pcap" "$W/capture.log"
  CAP_PID=$(bg atk "$W/capture.log" tcpdump -i eth0 -n -U --immediate-mode -s 96 -w "$W/capture.pcap")
  wait_for "capture" 5 grep -q "listening on" "$W/capture.log"
}
stop_capture() {
  sleep 0.5
  kill -INT "$CAP_PID" 2>/dev/null
  wait_for "the capture to end" 5 bash -c "! kill -0 $CAP_PID 2>/dev/null"
  local own
  own=$(ns atk tcpdump -n -r "$W/capture.pcap" "src host 203.0.113.50 or src host 2001:db8:4::2" 2>/dev/null | wc -l)
  if [ "$own" = 0 ]; then echo "the capture saw nothing at all; it is not working" >&2; echo broken; return; fi
  ns atk tcpdump -n -r "$W/capture.pcap" \
    "src host 203.0.113.18 or src host 2001:db8:2::2 or src host 2001:db8:10::2" 2>/dev/null | wc -l
}

# wireguard-go in namespace NS as interface IF with a wg-quick config.
start_wg() { # start_wg NS IF CONF
  local n="$1" ifc="$2" conf="$3"
  WG_PROCESS_FOREGROUND=1 bg "$n" "$W/$ifc.log" wireguard-go -f "$ifc" >/dev/null
  wait_for "wireguard-go $ifc" 10 ns "$n" ip link show "$ifc"
  grep -v '^Address' "$conf" | grep -v '^#' >"$conf.wg"
  ns "$n" wg setconf "$ifc" "$conf.wg"
  ns "$n" ip addr add "$(sed -n 's/^Address = //p' "$conf")" dev "$ifc"
  ns "$n" ip link set "$ifc" up
  ns "$n" ip route add 100.64.0.1/32 dev "$ifc"
}
stop_wg() { ns "$1" ip link del "$2" 2>/dev/null || true; }

# ---------------------------------------------------------------- scenarios

scenario_1() { # authorized download through hushgate connect
  local pid; pid=$(start_shim 32400 shim1)
  local t0; t0=$(date +%s.%N)
  fetch 32400 "$W/s1.bin"
  check_sha "$W/s1.bin"
  log "  $FILE_MIB MiB in $(since "$t0") s, sha256 matches"
  # Several connections at once.
  for i in 1 2 3; do fetch 32400 "$W/s1-$i.bin" & done
  wait
  for i in 1 2 3; do check_sha "$W/s1-$i.bin"; done
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

# junk_datagrams HOST PORT N: the attacker sends N datagrams to HOST:PORT,
# a third random bytes, a third shaped like handshake initiations with
# its own keys, a third like data packets.
junk_datagrams() {
  ns atk python3 - "$@" <<'EOF'
import os, socket, struct, sys
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(n):
    kind = i % 3
    if kind == 0:
        d = os.urandom(1 + i % 1400)
    elif kind == 1:
        d = struct.pack("<I", 1) + os.urandom(144)     # handshake initiation shape
    else:
        d = struct.pack("<I", 4) + os.urandom(28 + i % 1000)  # data packet shape
    s.sendto(d, (host, port))
EOF
}

scenario_2() { # the attacker gets zero packets from the home address
  start_capture
  # Random UDP and WireGuard-shaped datagrams (handshake initiations with
  # its own keys, data packets) to the gateway's port.
  junk_datagrams 203.0.113.18 51820 3000
  ns atk python3 - <<'EOF'
import os, socket, struct
s6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
for i in range(300):
    s6.sendto(struct.pack("<I", 1) + os.urandom(144), ("2001:db8:10::2", 51821))
EOF
  # A real WireGuard peer with its own key (wireguard-go sends real
  # initiations; it cannot know the gateway's key, so it guesses one).
  cat >"$W/atk-own.conf" <<EOF
[Interface]
PrivateKey = $(wg genkey)
Address = 100.64.0.99/32
[Peer]
PublicKey = $(wg genkey | wg pubkey)
Endpoint = 203.0.113.18:51820
AllowedIPs = 100.64.0.1/32
EOF
  start_wg atk "${P}a" "$W/atk-own.conf"
  ns atk curl -s --max-time 3 http://100.64.0.1:32400/identity >/dev/null || true
  stop_wg atk "${P}a"
  # TCP SYNs to the media port and to every port of the home router.
  ns atk nmap -n -Pn -sS -p 32400,51820,80,443 --max-retries 1 203.0.113.18 >"$W/nmap1.log" 2>&1
  ns atk nmap -n -Pn -sS -p- --min-rate 20000 --max-retries 0 203.0.113.18 >"$W/nmap2.log" 2>&1
  ns atk nmap -n -Pn -sU -p 51820 --max-retries 2 203.0.113.18 >"$W/nmap3.log" 2>&1
  local seen; seen=$(stop_capture)
  log "  3300 datagrams, a wireguard-go peer, 65,535+ SYNs, a UDP scan: $seen packets back"
  [ "$seen" = 0 ]
  grep -q "filtered" "$W/nmap3.log"
}

scenario_3() { # the attacker holds the client's admitted key and preshared key
  HUSHGATE_PASSWORD="$PASSWORD" ns cli "$BIN" connect --control https://203.0.113.2:8443 \
    --ca "$W/ctl/ca.pem" --user alice --server home --wg-config "$W/stolen.conf" >"$W/s3.log"
  # The real client, with stock wireguard-go: works (interoperability).
  start_wg cli "${P}c" "$W/stolen.conf"
  wait_for "stock WireGuard client through the gateway" 10 \
    ns cli curl -sf --max-time 2 http://100.64.0.1:32400/identity
  ns cli curl -sf --max-time 30 -o "$W/s3-real.bin" http://100.64.0.1:32400/file.bin
  check_sha "$W/s3-real.bin"
  # The same key and preshared key from the attacker's address.
  cp "$W/stolen.conf" "$W/attacker.conf"
  start_capture
  start_wg atk "${P}a" "$W/attacker.conf"
  if ns atk curl -s --max-time 4 http://100.64.0.1:32400/identity >/dev/null; then
    echo "the attacker reached the media server with a stolen key" >&2; return 1
  fi
  local seen; seen=$(stop_capture)
  stop_wg atk "${P}a"
  log "  stolen key from 203.0.113.50: $seen packets back; the real client still works"
  [ "$seen" = 0 ]
  ns cli curl -sf --max-time 5 http://100.64.0.1:32400/identity >/dev/null
  stop_wg cli "${P}c"
}

scenario_4() { # revocation ends an ongoing download within a second
  local pid; pid=$(start_shim 32401 shim4 bob)
  local adm; adm=$(sed -n 's/.*(admission \(adm_[0-9a-f]*\),.*/\1/p' "$W/shim4.log" | head -1)
  # A player that reads slowly, so the download is still running when the
  # admission is revoked.
  slow_player 127.0.0.1 32401 >"$W/s4-curl.log" 2>&1 &
  local curl=$!
  sleep 2
  local t0; t0=$(date +%s.%N)
  echo "revoke at $t0" >>"$W/s4-curl.log"
  admin admission revoke "$adm" >/dev/null
  local revoked_in; revoked_in=$(since "$t0")
  local rc=0; wait "$curl" || rc=$?
  local took; took=$(since "$t0")
  log "  download ended $took s after the revocation command started (which took $revoked_in s; player exit $rc)"
  [ "$rc" != 0 ]
  awk -v t="$took" 'BEGIN { exit !(t < 1.0) }' 
  if ns cli curl -sf --max-time 3 http://127.0.0.1:32401/identity >/dev/null 2>&1; then
    echo "a new connection worked after revocation" >&2; return 1
  fi
  wait_for "the shim to exit after revocation" 15 bash -c "! kill -0 $pid 2>/dev/null"
  grep -q "revoked" "$W/shim4.log"
}

scenario_5() { # expiry without renewal removes the peer; the shim's renewal keeps a download alive
  HUSHGATE_PASSWORD="$PASSWORD" ns cli "$BIN" connect --control https://203.0.113.2:8443 \
    --ca "$W/ctl/ca.pem" --user alice --server home --wg-config "$W/s5.conf" >/dev/null
  start_wg cli "${P}c" "$W/s5.conf"
  wait_for "stock client up" 10 ns cli curl -sf --max-time 2 http://100.64.0.1:32400/identity
  # The admission lives 15 s and nobody renews it.
  wait_for "the unrenewed admission to expire" 20 \
    bash -c "! ip netns exec $P-cli curl -sf --max-time 1 http://100.64.0.1:32400/identity"
  stop_wg cli "${P}c"
  log "  an unrenewed admission stopped working at its expiry"
  # With the shim: a download lasting twice the lifetime completes.
  local pid; pid=$(start_shim 32405 shim5)
  local t0; t0=$(date +%s)
  fetch 32405 "$W/s5.bin" --limit-rate 800K
  check_sha "$W/s5.bin"
  local took=$(( $(date +%s) - t0 ))
  grep -q "^renewed" "$W/shim5.log"
  log "  a $took s download survived $(grep -c '^renewed' "$W/shim5.log") renewals of a 15 s admission"
  [ "$took" -gt 15 ]
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

scenario_6() { # control plane killed: fail-static, fail-closed; restarted: nothing lost
  local pid; pid=$(start_shim 32406 shim6)
  fetch 32406 "$W/s6.bin" --limit-rate 4M &
  local dl=$!
  sleep 1
  # Admissions with their expiry: one from an earlier scenario may expire
  # (and rightly go) while the control plane is down.
  local before; before=$(admin admission list --json)
  kill -9 "$CTL_PID"
  wait_for "the control plane to die" 5 bash -c "! kill -0 $CTL_PID 2>/dev/null"
  wait "$dl"
  check_sha "$W/s6.bin"
  log "  control plane down: the ongoing download completed intact"
  local out rc=0
  out=$(HUSHGATE_PASSWORD="$PASSWORD" ns cli timeout 30 "$BIN" connect --control https://203.0.113.2:8443 \
    --ca "$W/ctl/ca.pem" --user alice --server home --listen 127.0.0.1:32416 2>&1) || rc=$?
  log "  a new access request: exit $rc: $(echo "$out" | tail -1 | cut -c1-110)"
  [ "$rc" != 0 ]
  echo "$out" | grep -q "cannot reach the control plane"
  start_control
  local after; after=$(admin admission list --json)
  # Nothing new, and everything from before that has not expired since.
  python3 - "$before" "$after" <<'PY'
import datetime, json, sys
before, after = (json.loads(a) for a in sys.argv[1:3])
now = datetime.datetime.now(datetime.timezone.utc)
alive = {a["id"] for a in before
         if datetime.datetime.fromisoformat(a["expires_at"].replace("Z", "+00:00")) > now}
got = {a["id"] for a in after}
assert got <= {a["id"] for a in before}, f"new admissions after the restart: {got}"
assert alive <= got, f"lost over the restart: {alive - got}"
PY
  log "  control plane restarted: the same admissions are there"
  # The gateway reconnects by itself (backoff up to 10 s).
  wait_for "the gateway to reconnect" 20 \
    bash -c "ip netns exec $P-edge $BIN gateway status --state $W/gw | grep -q '(connected)'"
  local pid2; pid2=$(start_shim 32426 shim6b)
  ns cli curl -sf --max-time 5 http://127.0.0.1:32426/identity >/dev/null
  kill "$pid" "$pid2"; wait "$pid" "$pid2" 2>/dev/null || true
}

scenario_7() { # gateway killed with SIGKILL and restarted: the shim recovers
  local pid; pid=$(start_shim 32407 shim7)
  ns cli curl -sf --max-time 5 http://127.0.0.1:32407/identity >/dev/null
  local gw; gw=$(cat "$W/gw.pid")
  kill -9 "$gw"
  wait_for "the gateway to die" 5 bash -c "! kill -0 $gw 2>/dev/null"
  start_gw4 gw-restart >/dev/null
  wait_gateway_synced gw-restart
  local t0; t0=$(date +%s.%N)
  wait_for "new connections through the shim after the gateway restart" 20 \
    ns cli curl -sf --max-time 2 http://127.0.0.1:32407/identity
  log "  gateway restarted from its state folder; new connections work $(since "$t0") s later"
  fetch 32407 "$W/s7.bin"; check_sha "$W/s7.bin"
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

scenario_8() { # the client's NAT changes its public address: re-admission
  local pid; pid=$(start_shim 32408 shim8)
  ns cli curl -sf --max-time 5 http://127.0.0.1:32408/identity >/dev/null
  ns cnat nft flush chain ip cnat post
  ns cnat nft add rule ip cnat post oifname "wan" ip saddr 198.51.100.0/24 snat to 203.0.113.35
  ns cnat conntrack -F >/dev/null 2>&1 || true
  # Traffic makes the shim notice the silence (1 s); its probe's answer
  # says the control plane now sees it from another address, and it
  # re-admits from there at once. The stall: from the move to the first
  # request answered again, polling every 50 ms.
  local t0 t1 tries=0; t0=$(date +%s%N)
  until ns cli curl -sf --max-time 1 -o /dev/null http://127.0.0.1:32408/identity; do
    tries=$((tries + 1)); [ "$tries" -lt 600 ] || { tail -20 "$W/shim8.log" >&2; return 1; }
    sleep 0.05
  done
  t1=$(date +%s%N)
  log "  NAT moved 203.0.113.34 -> .35: stalled $(( (t1 - t0) / 1000000 )) ms, then re-admitted"
  grep -q "network address changed; asking for a new admission" "$W/shim8.log"
  grep -q "203.0.113.35" <<<"$(admin admission list)"
  fetch 32408 "$W/s8.bin"; check_sha "$W/s8.bin"
  kill "$pid"; wait "$pid" 2>/dev/null || true
  ns cnat nft flush chain ip cnat post
  ns cnat nft add rule ip cnat post oifname "wan" ip saddr 198.51.100.0/24 snat to 203.0.113.34
  ns cnat conntrack -F >/dev/null 2>&1 || true
}

scenario_9() { # IPv6 only: control plane, gateway and client over IPv6
  local pid; pid=$(start_shim 32409 shim9 alice "https://[2001:db8:1::2]:8443" home6) || {
    ns edge "$BIN" gateway status --state "$W/gw6" >&2; admin admission list >&2; return 1; }
  fetch 32409 "$W/s9.bin"; check_sha "$W/s9.bin"
  grep -q "2001:db8:20::2" <<<"$(admin admission list)"
  log "  $FILE_MIB MiB over IPv6 only, sha256 matches"
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

# The gateway's own view: datagrams received and every drop counter.
gw_counters() {
  ns edge "$BIN" gateway status --state "$W/gw" --json | python3 -c '
import json, sys
g = json.load(sys.stdin)["gateway"]
print(json.dumps({"datagrams": g["datagrams"], "drops": g["drops"]}, sort_keys=True))'
}
# Packets the pre-filter of the gateway on UDP $1 dropped (its tunnel chain).
kernel_drops() {
  ns edge nft list chain inet "hushgate_$1" tunnel | sed -n 's/.*counter packets \([0-9]*\).*/\1/p' | head -1
}
# A bounded burst from the attacker: random and WireGuard-shaped datagrams.
junk() { # junk COUNT
  ns atk python3 - "$1" <<'EOF'
import os, socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(int(sys.argv[1])):
    d = (os.urandom(1 + i % 1400), struct.pack("<I", 1) + os.urandom(144),
         struct.pack("<I", 4) + os.urandom(28 + i % 1000))[i % 3]
    s.sendto(d, ("203.0.113.18", 51820))
EOF
}

scenario_10() { # with the pre-filter, a flood from an unknown source never reaches the gateway process
  ns edge nft list table inet hushgate_51820 >"$W/s10-table.txt"
  local before k_before; before=$(gw_counters); k_before=$(kernel_drops 51820)
  junk 30000
  sleep 0.5
  local after k_after; after=$(gw_counters); k_after=$(kernel_drops 51820)
  log "  30000 datagrams from 203.0.113.50: kernel dropped $((k_after - k_before)); gateway counters before $before"
  log "                                                   after  $after"
  [ "$before" = "$after" ]
  [ $((k_after - k_before)) -ge 30000 ]
  # An admitted client still gets through (its source is in the set).
  local pid; pid=$(start_shim 32410 shim10)
  ns cli curl -sf --max-time 5 http://127.0.0.1:32410/identity >/dev/null
  grep -q "203.0.113.34" <<<"$(ns edge nft list set inet hushgate_51820 t4_32)"
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

scenario_11() { # gateway killed: the port stays dark (no ICMP), until the filter is removed by hand
  local gw; gw=$(cat "$W/gw.pid")
  kill -9 "$gw"
  wait_for "the gateway to die" 5 bash -c "! kill -0 $gw 2>/dev/null"
  start_capture
  junk 300
  ns atk nmap -n -Pn -sU -p 51820 --max-retries 2 203.0.113.18 >"$W/s11-nmap.log" 2>&1
  ns atk nmap -n -Pn -sS -p 32401 --max-retries 1 203.0.113.18 >>"$W/s11-nmap.log" 2>&1
  local seen; seen=$(stop_capture)
  log "  gateway down: 300 datagrams, a UDP scan and SYNs to the direct port: $seen packets back"
  [ "$seen" = 0 ]
  grep -q "open|filtered" "$W/s11-nmap.log"
  # Started again without the pre-filter while its table is still there,
  # the gateway refuses (the table would drop every client it admits).
  if timeout 20 ip netns exec "$P-edge" "$BIN" gateway --control https://203.0.113.2:8443 \
      --ca "$W/ctl/ca.pem" --state "$W/gw" --listen-udp 0.0.0.0:51820 \
      --service plex=32400:127.0.0.1:32400 --prefilter off >"$W/s11-off.log" 2>&1; then
    echo "a gateway started with --prefilter off over a stale table" >&2; return 1
  fi
  grep -q "still in place" "$W/s11-off.log"
  # The control: without the table the kernel answers the same probes
  # (ICMP port unreachable, TCP reset), so the capture above would have
  # seen them.
  grep -q "removed table inet hushgate_51820" <<<"$(ns edge "$BIN" gateway filter remove --port 51820)"
  start_capture
  junk 30
  ns atk nmap -n -Pn -sS -p 32401 --max-retries 1 203.0.113.18 >>"$W/s11-nmap.log" 2>&1
  local control; control=$(stop_capture)
  log "  filter removed by hand, gateway still down: $control packets back (the kernel's usual answers)"
  [ "$control" != broken ]
  [ "$control" -gt 0 ]
  start_gw4 gw-restart11 >/dev/null
  wait_gateway_synced gw-restart11
  ns edge nft list table inet hushgate_51820 >/dev/null
}

# Direct mode in the client's namespace, as user carol; prints the endpoint.
start_direct() { # start_direct LOGNAME
  local name="$1" pid
  pid=$(HUSHGATE_PASSWORD="$PASSWORD" bg cli "$W/$name.log" "$BIN" connect --control https://203.0.113.2:8443 \
    --ca "$W/ctl/ca.pem" --user carol --server home --direct)
  wait_for "direct admission $name" 20 grep -q "^ready:" "$W/$name.log" || { cat "$W/$name.log" >&2; return 1; }
  echo "$pid"
}
direct_url() { sed -n 's/^ready: point the player at \(http:[^ ]*\) .*/\1/p' "$W/$1.log" | head -1; }

scenario_12() { # direct mode: plain TCP download for the admitted address, nothing for the attacker
  local pid; pid=$(start_direct direct12)
  local url; url=$(direct_url direct12)
  log "  direct endpoint $url"
  [ "$url" = "http://203.0.113.18:32401" ]
  local t0; t0=$(date +%s.%N)
  ns cli curl -sS --max-time 60 -o "$W/s12.bin" "$url/file.bin"
  check_sha "$W/s12.bin"
  log "  $FILE_MIB MiB over plain TCP in $(since "$t0") s, sha256 matches"
  grep -q "203.0.113.34 . 32401" <<<"$(ns edge nft list set inet hushgate_51820 d4_32)"
  start_capture
  ns atk nmap -n -Pn -sS -p 32401 --max-retries 2 203.0.113.18 >"$W/s12-nmap.log" 2>&1
  ns atk python3 -c '
import socket
for i in range(5):
    try:
        socket.create_connection(("203.0.113.18", 32401), timeout=1)
        raise SystemExit("the attacker connected to the direct port")
    except OSError:
        pass'
  local seen; seen=$(stop_capture)
  log "  attacker SYNs to the direct port while it is open to the client: $seen packets back"
  [ "$seen" = 0 ]
  ns edge "$BIN" gateway status --state "$W/gw" --json | python3 -c '
import json, sys
d = json.load(sys.stdin)["direct"]
assert d["accepted"] >= 1 and d["refused"] == 0, d'
  kill -INT "$pid"
  wait_for "Ctrl-C to revoke the direct admission" 10 grep -q "^revoked" "$W/direct12.log"
  if ns cli curl -s --max-time 3 -o /dev/null "$url/identity"; then
    echo "the direct port still answered after Ctrl-C revoked the admission" >&2; return 1
  fi
}

scenario_13() { # revocation cuts an ongoing direct download within a second
  local pid; pid=$(start_direct direct13)
  local url; url=$(direct_url direct13)
  local adm; adm=$(sed -n 's/.*admission \(adm_[0-9a-f]*\),.*/\1/p' "$W/direct13.log" | head -1)
  local hostport="${url#http://}"
  slow_player "${hostport%:*}" "${hostport##*:}" >"$W/s13-player.log" 2>&1 &
  local player=$!
  sleep 2
  local t0; t0=$(date +%s.%N)
  admin admission revoke "$adm" >/dev/null
  local rc=0; wait "$player" || rc=$?
  local took; took=$(since "$t0")
  log "  direct download ended $took s after the revocation command started ($(cat "$W/s13-player.log"))"
  [ "$rc" = 1 ]
  awk -v t="$took" 'BEGIN { exit !(t < 1.0) }'
  if ns cli curl -s --max-time 3 -o /dev/null "$url/identity"; then
    echo "a new direct connection worked after revocation" >&2; return 1
  fi
  kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true
}

scenario_14() { # first-handshake binding: the pre-filter opens the port until the handshake, then admits only the pinned source
  local pid; pid=$(start_shim 32414 shim14 alice "https://[2001:db8:1::2]:8443" homefh) || {
    ns edge "$BIN" gateway status --state "$W/gwfh" >&2; return 1; }
  ns cli curl -sf --max-time 5 http://127.0.0.1:32414/identity >/dev/null
  # Pinned: the client's address is an element, and the port is closed
  # to everyone else again.
  wait_for "the pinned source in the pre-filter" 5 \
    bash -c "ip netns exec $P-edge nft list set inet hushgate_51822 t6_128 | grep -q 2001:db8:20::2"
  ns edge nft list set inet hushgate_51822 open >"$W/s14-open.txt"
  if grep -q "elements" "$W/s14-open.txt"; then
    echo "the port is still open to everyone after the pinning handshake" >&2; cat "$W/s14-open.txt" >&2; return 1
  fi
  local before k_before; before=$(ns edge "$BIN" gateway status --state "$W/gwfh" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["gateway"]["datagrams"])')
  start_capture
  ns atk python3 - <<'EOF'
import os, socket, struct
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
for i in range(2000):
    s.sendto(struct.pack("<I", 1) + os.urandom(144), ("2001:db8:10::2", 51822))
EOF
  local seen; seen=$(stop_capture)
  local after; after=$(ns edge "$BIN" gateway status --state "$W/gwfh" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["gateway"]["datagrams"])')
  log "  pinned to 2001:db8:20::2; 2000 initiations from the attacker: $seen packets back, the gateway received $((after - before)) datagrams meanwhile (its client's keepalives at most)"
  [ "$seen" = 0 ]
  [ $((after - before)) -lt 100 ]
  fetch 32414 "$W/s14.bin"; check_sha "$W/s14.bin"
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

# A deploy/ unit's ExecStart as systemd would run it on a host whose
# files this test keeps under ROOTDIR: /usr/local/bin/hushgate is $BIN,
# /etc/hushgate and /var/lib/hushgate are under ROOTDIR, %H is the host
# name. It prints one argument per line (ExecStart has no quoting).
unit_exec() { # unit_exec UNIT ROOTDIR
  sed -n 's/^ExecStart=//p' "$ROOT/deploy/$1" | head -1 | tr ' ' '\n' | grep -v '^$' |
    sed -e "s#^/usr/local/bin/hushgate\$#$BIN#" -e "s#/etc/hushgate#$2/etc/hushgate#g" \
        -e "s#/var/lib/hushgate#$2/var/lib/hushgate#g" -e "s#%H#$(hostname)#g"
}
# Emulates the unit's LoadCredential=ID:PATH (and its SetCredential=ID:VALUE
# fallback when PATH is missing): the credential directory systemd would
# make, whose path goes to the service in CREDENTIALS_DIRECTORY.
unit_credentials() { # unit_credentials UNIT ROOTDIR CREDDIR
  local line id path value
  mkdir -p "$3"; chmod 700 "$3"; rm -f "$3"/*
  while read -r line; do
    id="${line%%:*}"; path="${line#*:}"
    if [ -f "$2$path" ]; then cp "$2$path" "$3/$id"; continue; fi
    value=$(sed -n "s/^SetCredential=$id://p" "$ROOT/deploy/$1" | head -1)
    printf '%b' "$value" >"$3/$id"
  done < <(sed -n 's/^LoadCredential=//p' "$ROOT/deploy/$1")
}

scenario_16() { # the README's deploy steps and deploy/ files, followed literally on hosts of their own
  # The control plane host (dctl): the unit's command line, its state in
  # StateDirectory=hushgate/control.
  local cr="$W/dctl-root" gr="$W/dgw-root" cred="$W/dgw-root/run/credentials"
  mkdir -p "$cr/var/lib/hushgate/control" "$gr/etc/hushgate" "$gr/var/lib/hushgate/gateway"
  chmod 700 "$cr/var/lib/hushgate/control" "$gr/var/lib/hushgate/gateway"
  local -a ctl_cmd gw_cmd
  mapfile -t ctl_cmd < <(unit_exec hushgate-control.service "$cr")
  mapfile -t gw_cmd < <(unit_exec hushgate-gateway.service "$gr")
  log "  control unit: ${ctl_cmd[*]#$W/}"
  log "  gateway unit: ${gw_cmd[*]#$W/}"
  bg dctl "$W/d-control.log" "${ctl_cmd[@]}" >/dev/null
  local cstate="$cr/var/lib/hushgate/control"
  wait_for "the deployed control plane" 15 test -s "$cstate/control-url"
  # The admin steps of the README, on the control plane's host.
  local dadmin=(ns dctl "$BIN" admin --state "$cstate")
  HUSHGATE_PASSWORD="$PASSWORD" "${dadmin[@]}" user add alice >/dev/null
  local token; token=$("${dadmin[@]}" server add living-room | grep '^hge_')
  "${dadmin[@]}" grant add alice living-room >/dev/null

  # The gateway host (dgw): ca.pem copied over from the control plane, the
  # token in a root-only file, deploy/gateway.toml with only its
  # addresses (and the paths under this host's root) changed.
  cp "$cstate/ca.pem" "$gr/etc/hushgate/ca.pem"
  (umask 077; echo "$token" >"$gr/etc/hushgate/enroll-token")
  sed -e 's#control\.example\.net#203.0.113.66#g' -e 's#198\.51\.100\.10#203.0.113.82#g' \
      -e "s#/etc/hushgate#$gr/etc/hushgate#g" -e "s#/var/lib/hushgate#$gr/var/lib/hushgate#g" \
      "$ROOT/deploy/gateway.toml" >"$gr/etc/hushgate/gateway.toml"
  if ! ns dgw curl -sf --max-time 5 --cacert "$gr/etc/hushgate/ca.pem" https://203.0.113.66:8443/v1/health -o /dev/null; then
    echo "the gateway's host cannot reach the deployed control plane over verified HTTPS (its certificate must name 203.0.113.66: the control unit's defaults, see --san)" >&2
    ns dgw curl -sS --max-time 5 --cacert "$gr/etc/hushgate/ca.pem" https://203.0.113.66:8443/v1/health -o /dev/null >&2 || true
    return 1
  fi
  bg dgw "$W/d-media.log" python3 -m http.server 32400 --bind 127.0.0.1 --directory "$W/media" >/dev/null
  wait_for "the media server on the gateway's host" 10 ns dgw curl -sf -o /dev/null http://127.0.0.1:32400/identity
  unit_credentials hushgate-gateway.service "$gr" "$cred"
  local gw
  gw=$(CREDENTIALS_DIRECTORY="$cred" bg dgw "$W/d-gw.log" "${gw_cmd[@]}")
  wait_for "the deployed gateway in sync" 20 grep -q "in sync" "$W/d-gw.log" || { cat "$W/d-gw.log" >&2; return 1; }

  # The client, as the README says, on its own network behind its NAT.
  cp "$cstate/ca.pem" "$W/d-client-ca.pem"
  local shim
  shim=$(HUSHGATE_PASSWORD="$PASSWORD" bg cli "$W/d-shim.log" "$BIN" connect --control https://203.0.113.66:8443 \
    --ca "$W/d-client-ca.pem" --user alice --server living-room --listen 127.0.0.1:32400)
  wait_for "the deployed client ready" 20 grep -q "^ready:" "$W/d-shim.log" || { cat "$W/d-shim.log" >&2; return 1; }
  fetch 32400 "$W/s16.bin"; check_sha "$W/s16.bin"
  log "  $FILE_MIB MiB through the deployed gateway, sha256 matches"
  local status; status=$(ns dgw "$BIN" gateway status --state "$gr/var/lib/hushgate/gateway")
  echo "$status" | grep -q "health: up"
  echo "$status" | grep -q "^peer: "

  # A second gateway on the same state folder is refused.
  local out rc=0
  out=$(CREDENTIALS_DIRECTORY="$cred" ns dgw timeout 20 "${gw_cmd[@]}" 2>&1) || rc=$?
  [ "$rc" != 0 ] && echo "$out" | grep -q "is in use by a hushgate gateway (pid $gw)" ||
    { echo "a second gateway on the same state folder was not refused: $out" >&2; return 1; }

  # As deploy/gateway.toml says, the token file goes once enrolled; the
  # unit restarts the gateway (Restart=always), systemd falling back to
  # SetCredential=: it must start and serve again.
  rm "$gr/etc/hushgate/enroll-token"
  kill "$gw"; wait_for "the deployed gateway to stop" 10 bash -c "! kill -0 $gw 2>/dev/null"
  unit_credentials hushgate-gateway.service "$gr" "$cred"
  gw=$(CREDENTIALS_DIRECTORY="$cred" bg dgw "$W/d-gw2.log" "${gw_cmd[@]}")
  wait_for "the restarted gateway in sync" 20 grep -q "in sync" "$W/d-gw2.log" || { cat "$W/d-gw2.log" >&2; return 1; }
  wait_for "the client through the restarted gateway" 20 ns cli curl -sf --max-time 2 -o /dev/null http://127.0.0.1:32400/identity
  log "  restarted without its token file: in sync, the client gets through"
  kill "$shim" "$gw"; wait "$shim" "$gw" 2>/dev/null || true
}

# ------------------------------------------- scenario 17: miniupnpd router

# A STUN server on the "Internet" (203.0.113.97:3478): miniupnpd refuses to
# map when its WAN address is reserved (and every documentation range
# is), unless STUN shows that address is reachable from outside as it is.
# The answer names the address and port the request came from.
start_stun() {
  cat >"$W/stun.py" <<'EOF'
import socket, struct
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("203.0.113.97", 3478))
while True:
    d, (ip, port) = s.recvfrom(2048)
    if len(d) < 20 or d[0:2] != b"\x00\x01":
        continue
    attr = struct.pack("!HHBBH4s", 0x0001, 8, 0, 1, port, socket.inet_aton(ip))
    s.sendto(struct.pack("!HH", 0x0101, len(attr)) + d[4:20] + attr, (ip, port))
EOF
  bg inet "$W/stun.log" python3 "$W/stun.py" >/dev/null
}

# start_upnp [stun|nostun] [all|igd]: Debian's miniupnpd (nftables
# backend) on the router with UPnP IGD, NAT-PMP and PCP (`igd`: UPnP IGD
# only); `nostun` leaves its (reserved) WAN address unchecked, so it
# refuses every mapping as a router behind another NAT does.
start_upnp() {
  local mode="${1:-stun}" protocols="${2:-all}" conf="$W/miniupnpd.conf"
  cat >"$conf" <<EOF
ext_ifname=${UPNP_WAN:-wan}
listening_ip=lan
http_port=0
enable_natpmp=$([ "$protocols" = igd ] && echo no || echo yes)
enable_upnp=yes
secure_mode=yes
system_uptime=no
uuid=8e3c1f0a-5b1d-4c7e-9f00-000000000017
upnp_table_name=miniupnpd
upnp_nat_table_name=miniupnpd
allow 1024-65535 192.0.2.0/24 1024-65535
deny 0-65535 0.0.0.0/0 0-65535
EOF
  if [ "$mode" = stun ]; then
    printf 'ext_perform_stun=yes\next_stun_host=203.0.113.97\next_stun_port=3478\n' >>"$conf"
  fi
  # A router that takes its WAN address for its public one, unchecked.
  if [ -n "${UPNP_EXT_IP:-}" ]; then echo "ext_ip=$UPNP_EXT_IP" >>"$conf"; fi
  : >"$W/miniupnpd.log"
  bg mrt "$W/miniupnpd.log" miniupnpd -d -f "$conf" -P "$W/miniupnpd.pid" >"$W/upnp.pid"
  local ready="Listening for NAT-PMP/PCP"
  [ "$protocols" = igd ] && ready="HTTP listening on port"
  wait_for "miniupnpd" 20 grep -q "$ready" "$W/miniupnpd.log" ||
    { cat "$W/miniupnpd.log" >&2; return 1; }
}
# stop_upnp: stops miniupnpd and empties its chains, as a router's reboot
# does (its port mappings are forgotten).
stop_upnp() {
  local pid; pid=$(cat "$W/upnp.pid")
  kill "$pid" 2>/dev/null || true
  wait_for "miniupnpd to stop" 10 bash -c "! kill -0 $pid 2>/dev/null"
  for c in miniupnpd prerouting_miniupnpd postrouting_miniupnpd; do
    ns mrt nft flush chain inet miniupnpd "$c"
  done
}
# The router's port forwarding of UDP 51820 (miniupnpd's DNAT rule).
upnp_forwards() { grep -q "dport 51820" <<<"$(ns mrt nft list chain inet miniupnpd prerouting_miniupnpd)"; }

start_gwu() { # start_gwu [TOKEN]: the gateway behind the miniupnpd router, no endpoint given
  HUSHGATE_ENROLL_TOKEN="${1:-}" bg mgw "$W/gwu.log" "$BIN" gateway \
    --control https://203.0.113.2:8443 --ca "$W/ctl/ca.pem" --state "$W/gwu" \
    --listen-udp 0.0.0.0:51820 --service plex=32400:127.0.0.1:32400 \
    --port-mapping-check 2 >"$W/gwu.pid"
  wait_for "gateway behind miniupnpd in sync" 20 grep -q "in sync" "$W/gwu.log" ||
    { cat "$W/gwu.log" >&2; return 1; }
}
stop_gwu() {
  local pid; pid=$(cat "$W/gwu.pid")
  kill -TERM "$pid"
  wait_for "the gateway to stop" 20 bash -c "! kill -0 $pid 2>/dev/null"
}
# The control plane's view of server upnp (admin server list).
upnp_view() { admin server list | sed -n '/^upnp /,/^[^ ]/p'; }
upnp_view_has() { grep -q "$1" <<<"$(upnp_view)"; }
gwu_status_has() { grep -q "$1" <<<"$(ns mgw "$BIN" gateway status --state "$W/gwu")"; }

scenario_17() { # a router running miniupnpd: the gateway maps its port, is checked, clients get in, strangers get nothing
  start_stun
  start_upnp stun
  bg mgw "$W/mgw-media.log" python3 -m http.server 32400 --bind 127.0.0.1 --directory "$W/media" >/dev/null
  wait_for "the media server behind miniupnpd" 10 ns mgw curl -sf -o /dev/null http://127.0.0.1:32400/identity
  local token; token=$(admin server add upnp --binding exact --ttl 15 | tail -1)
  admin grant add alice upnp >/dev/null
  upnp_forwards && { echo "UDP 51820 is forwarded before any gateway asked" >&2; return 1; }
  start_gwu "$token"
  wait_for "the port mapped on the router" 20 grep -q "port mapped on the router" "$W/gwu.log" ||
    { cat "$W/gwu.log" >&2; return 1; }
  upnp_forwards
  grep "port mapped on the router" "$W/gwu.log" | tail -1 | sed 's/^.*INFO //' | while read -r l; do log "  $l"; done
  local st; st=$(ns mgw "$BIN" gateway status --state "$W/gwu")
  grep -q "port mapping: mapped on 192.0.2.1 with PCP: 203.0.113.98:51820" <<<"$st" ||
    { echo "status: $st" >&2; return 1; }
  # The control plane checked the mapped endpoint through the router.
  wait_for "the reachability check" 20 upnp_view_has 'reachability: reachable at 203.0.113.98:51820' ||
    { upnp_view >&2; return 1; }
  log "  $(upnp_view | grep 'reachability:' | sed 's/^ *//')"
  wait_for "gateway status shows the check" 20 gwu_status_has 'reachability: reachable at 203.0.113.98:51820'
  admin server check upnp >"$W/check-ok.log"
  grep -q "reachable at 203.0.113.98:51820" "$W/check-ok.log"

  # A client from the Internet (behind its own NAT) downloads.
  local shim; shim=$(start_shim 32417 shim17 alice https://203.0.113.2:8443 upnp)
  fetch 32417 "$W/s17.bin"; check_sha "$W/s17.bin"
  log "  $FILE_MIB MiB through the mapped port, sha256 matches"

  # The attacker: datagrams of every shape to the mapped port, nothing back.
  rm -f "$W/capture.pcap" "$W/capture.log"
  local cap; cap=$(bg atk "$W/capture.log" tcpdump -i eth0 -n -U --immediate-mode -s 96 -w "$W/capture17.pcap")
  wait_for "capture" 5 grep -q "listening on" "$W/capture.log"
  junk_datagrams 203.0.113.98 51820 1500
  ns atk nmap -n -Pn -sU -p 51820,5351,1900 --max-retries 1 203.0.113.98 >"$W/nmap17.log" 2>&1
  sleep 0.5; kill -INT "$cap"; wait_for "the capture to end" 5 bash -c "! kill -0 $cap 2>/dev/null"
  local own seen
  own=$(ns atk tcpdump -n -r "$W/capture17.pcap" "src host 203.0.113.50" 2>/dev/null | wc -l)
  seen=$(ns atk tcpdump -n -r "$W/capture17.pcap" "src host 203.0.113.98" 2>/dev/null | wc -l)
  log "  attacker: 1500 datagrams and a UDP scan of the router: $seen packets back ($own sent)"
  [ "$own" -gt 0 ] && [ "$seen" = 0 ]

  # A firewall in front of the gateway (here the host's own) drops what
  # the mapping lets in: the check fails and says so.
  ns mgw nft -f - <<'EOF'
table inet hostfw {
  chain input {
    type filter hook input priority filter; policy accept;
    iifname "eth0" udp dport 51820 drop
  }
}
EOF
  local rc=0; admin server check upnp >"$W/check-fw.log" || rc=$?
  ns mgw nft delete table inet hostfw
  [ "$rc" = 1 ] && grep -q "but the check from the Internet got no answer: another firewall drops it" "$W/check-fw.log" ||
    { cat "$W/check-fw.log" >&2; return 1; }
  log "  host firewall: $(grep -m1 'problem:' "$W/check-fw.log" | sed 's/^ *//')"

  # The router restarts and forgets every mapping: the gateway's next
  # check notices (PCP's epoch went back) and maps again.
  stop_upnp
  upnp_forwards && return 1
  start_upnp stun
  wait_for "the mapping made again" 30 upnp_forwards || { tail -20 "$W/gwu.log" >&2; return 1; }
  wait_for "the gateway's log of it" 10 grep -q "the router had lost the port mapping" "$W/gwu.log"
  log "  miniupnpd restarted: the gateway mapped the port again"
  wait_for "the client through the mapping made again" 30 ns cli curl -sf --max-time 2 -o /dev/null http://127.0.0.1:32417/identity
  kill "$shim"; wait "$shim" 2>/dev/null || true

  # The provider gives the router another address: miniupnpd sees it (and
  # runs STUN again), the gateway's mapping shows the new external
  # address, it reports the new endpoint, and a new client uses it.
  ns mrt sysctl -qw net.ipv4.conf.wan.promote_secondaries=1
  ns mrt ip addr add 203.0.113.99/28 dev wan
  ns mrt ip addr del 203.0.113.98/28 dev wan
  ns mrt ip route replace default via 203.0.113.97
  kill -USR1 "$(cat "$W/upnp.pid")"
  wait_for "the new endpoint checked" 40 upnp_view_has 'reachability: reachable at 203.0.113.99:51820' ||
    { upnp_view >&2; tail -20 "$W/gwu.log" >&2; return 1; }
  grep -q "external address changed" "$W/gwu.log"
  shim=$(start_shim 32418 shim17b alice https://203.0.113.2:8443 upnp)
  fetch 32418 "$W/s17b.bin"; check_sha "$W/s17b.bin"
  # (203.0.113.98 exists nowhere any more: the download came through .99.)
  log "  the router's address changed to 203.0.113.99: reported, checked, and a new client downloads through it"
  kill "$shim"; wait "$shim" 2>/dev/null || true

  # A clean stop deletes the mapping.
  stop_gwu
  upnp_forwards && { echo "the mapping outlived the gateway" >&2; return 1; }
  grep -q "port mapping deleted" "$W/gwu.log"
  log "  gateway stopped: the router forwards nothing any more"

  # A router with UPnP IGD only (NAT-PMP and PCP off): mapped with UPnP,
  # reachable, and deleted again at a clean stop.
  stop_upnp
  start_upnp stun igd
  start_gwu
  wait_for "the port mapped with UPnP" 30 grep -q "port mapped on the router.*protocol=UPnP IGD" "$W/gwu.log" ||
    { tail -5 "$W/gwu.log" >&2; tail -20 "$W/miniupnpd.log" >&2; return 1; }
  wait_for "the router's forwarding" 10 upnp_forwards ||
    { ns mrt nft list table inet miniupnpd >&2; return 1; }
  wait_for "the check of the UPnP mapping" 30 upnp_view_has 'reachability: reachable at 203.0.113.99:51820' ||
    { upnp_view >&2; return 1; }
  stop_gwu
  upnp_forwards && { echo "the UPnP mapping outlived the gateway" >&2; return 1; }
  log "  UPnP IGD only: mapped, reachable, deleted at the stop"

  # No mapping protocol on the router: not reachable, and why.
  stop_upnp
  start_gwu
  wait_for "the gateway to give up on mapping" 30 grep -q "no router answered PCP, NAT-PMP or UPnP" "$W/gwu.log"
  rc=0; admin server check upnp >"$W/check-none.log" || rc=$?
  [ "$rc" = 1 ] && grep -q "NOT reachable at 203.0.113.99:51820" "$W/check-none.log" &&
    grep -q "answers none of PCP, NAT-PMP and UPnP" "$W/check-none.log" ||
    { cat "$W/check-none.log" >&2; return 1; }
  log "  no protocol: $(grep -m1 'problem:' "$W/check-none.log" | sed 's/^ *//')"
  # A client asking now is told why its tunnel will not come up.
  HUSHGATE_PASSWORD="$PASSWORD" ns cli "$BIN" connect --control https://203.0.113.2:8443 \
    --ca "$W/ctl/ca.pem" --user alice --server upnp --wg-config "$W/s17.conf" >"$W/s17-wg.log" 2>&1
  grep -q "^warning: .*answers none of PCP, NAT-PMP and UPnP" "$W/s17-wg.log" ||
    { cat "$W/s17-wg.log" >&2; return 1; }
  stop_gwu

  # A router that answers but has no public address of its own (miniupnpd
  # without STUN on a reserved WAN address: as behind a second NAT).
  start_upnp nostun
  start_gwu
  wait_for "the router's refusal" 30 grep -q "the router refused to map the port" "$W/gwu.log"
  rc=0; admin server check upnp >"$W/check-refused.log" || rc=$?
  [ "$rc" = 1 ] && grep -q "refused to map the port" "$W/check-refused.log" ||
    { cat "$W/check-refused.log" >&2; return 1; }
  log "  refused: $(grep -m1 'problem:' "$W/check-refused.log" | sed 's/^ *//')"
  stop_gwu
  stop_upnp

  # Double NAT: the router's Internet side moves behind a provider's NAT
  # (isp, in front of wan2; its own uplink unplugged). miniupnpd learns by
  # STUN that it sits behind a NAT it takes for a full cone, and maps the
  # port on its own side with the provider's address as the external one;
  # the provider's NAT in front was not opened. The check gets no answer,
  # and the diagnosis names the device in front.
  ns mrt ip link set wan down
  ns mrt ip route replace default via 198.51.100.129
  UPNP_WAN=wan2 start_upnp stun
  start_gwu
  wait_for "the mapping behind the provider's NAT" 30 \
    grep -q "port mapped on the router.*external=203.0.113.114:51820" "$W/gwu.log" ||
    { tail -20 "$W/gwu.log" >&2; tail -20 "$W/miniupnpd.log" >&2; return 1; }
  rc=0; admin server check upnp >"$W/check-dnat.log" || rc=$?
  [ "$rc" = 1 ] && grep -q "NOT reachable at 203.0.113.114:51820" "$W/check-dnat.log" &&
    grep -q "another firewall drops it (the host's own, a second router, or the provider)" "$W/check-dnat.log" ||
    { cat "$W/check-dnat.log" >&2; return 1; }
  log "  double NAT: $(grep -m1 'problem:' "$W/check-dnat.log" | sed 's/^ *//')"
  stop_gwu
  stop_upnp
  ns mrt ip link set wan up
  ns mrt ip route replace default via 203.0.113.97
}

# A 60 s H.264 + AAC film at about 4 Mbit/s (constant bit rate), made
# from ffmpeg's test sources, beside the media server's other files.
FILM_SECS=60
make_film() {
  ffmpeg -hide_banner -nostdin -v error -f lavfi -i "testsrc2=size=1280x720:rate=30" \
    -f lavfi -i "sine=frequency=440:sample_rate=48000" -t "$FILM_SECS" \
    -c:v libx264 -preset ultrafast -b:v 3800k -minrate 3800k -maxrate 3800k -bufsize 1900k \
    -x264-params nal-hrd=cbr -g 60 -pix_fmt yuv420p -c:a aac -b:a 128k -movflags +faststart \
    "$W/media/film.mp4"
  FILM_FRAMES=$(ffprobe -v error -select_streams v:0 -show_entries stream=nb_frames -of csv=p=0 "$W/media/film.mp4")
  FILM_RATE=$(ffprobe -v error -show_entries format=bit_rate -of csv=p=0 "$W/media/film.mp4")
}

# A player in the client's namespace: ffmpeg reads URL at the film's own
# pace (-re) and decodes every stream; prints one JSON line: frames
# decoded, wall time, how far (s) it fell behind real time at worst
# (wall clock since start minus media time read, sampled every 0.25 s,
# startup included), and ffmpeg's errors. Killed after LIMIT s.
film_player() { # film_player URL LIMIT
  ns cli python3 - "$1" "$2" <<'EOF'
import json, subprocess, sys, threading, time
url, limit = sys.argv[1], float(sys.argv[2])
t0 = time.monotonic()
p = subprocess.Popen(["ffmpeg", "-hide_banner", "-nostdin", "-v", "error", "-re", "-i", url,
                      "-map", "0", "-f", "null", "-", "-progress", "pipe:1", "-stats_period", "0.25"],
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
err = []
threading.Thread(target=lambda: err.extend(p.stderr), daemon=True).start()
killer = threading.Timer(limit, p.kill); killer.start()
cur, frames, media, lag, lag_at = {}, 0, 0.0, 0.0, 0.0
for line in p.stdout:
    k, _, v = line.strip().partition("=")
    cur[k] = v
    if k == "progress":
        now = time.monotonic() - t0
        frames = int(cur.get("frame", "0") or 0)
        us = cur.get("out_time_us", "N/A")
        media = int(us) / 1e6 if us.lstrip("-").isdigit() else 0.0
        if now - media > lag:
            lag, lag_at = now - media, media
p.wait(); killer.cancel()
print(json.dumps({"frames": frames, "wall": round(time.monotonic() - t0, 2), "media": round(media, 2),
                  "max_lag": round(lag, 2), "lag_at_media": round(lag_at, 1), "killed": p.returncode == -9,
                  "rc": p.returncode, "errors": "".join(err)[-500:]}))
EOF
}
# film_verdict NAME JSON: the player kept up and decoded every frame.
FILM_MARGIN=3
film_verdict() {
  python3 - "$1" "$2" "$FILM_FRAMES" "$FILM_SECS" "$FILM_MARGIN" "$FILM_RATE" <<'EOF'
import json, sys
name, r, frames, secs, margin, rate = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]), float(sys.argv[6])
bad = []
if r["killed"]: bad.append(f"still playing after {r['wall']} s, killed, {r['media']} s of the film read (about {r['media'] * rate / r['wall'] / 1e6:.1f} Mbit/s delivered)")
if r["frames"] != frames: bad.append(f"{r['frames']} of {frames} frames decoded")
if r["errors"].strip(): bad.append("ffmpeg errors: " + r["errors"].strip()[-200:])
if r["wall"] > secs + margin: bad.append(f"took {r['wall']} s for a {secs:g} s film")
if r["max_lag"] > margin: bad.append(f"fell {r['max_lag']} s behind real time (at {r['lag_at_media']} s of the film)")
print(f"{name}: {'ok' if not bad else 'FAILED'}: {r['frames']} frames, {r['wall']} s wall, at worst {r['max_lag']} s behind real time" + ("".join("; " + b for b in bad)))
sys.exit(1 if bad else 0)
EOF
}

scenario_15() { # a real film through the shim over a lossy path (1 % loss, 40 ms round trip) plays at real speed; plain TCP through the same emulator as a control
  make_film
  log "  film: $FILM_SECS s, $FILM_FRAMES frames, $((FILM_RATE / 1000)) kbit/s (H.264 + AAC, made by ffmpeg)"
  local pid dpid
  pid=$(start_shim 32415 shim15)
  # The control: the same film over plain TCP (direct mode: the kernel's
  # TCP at both ends), sent with BBR (the kernel's CUBIC carries about
  # 3.4 Mbit/s at 1 % loss and 40 ms, less than the film needs).
  local cc; cc=$(ns edge sysctl -n net.ipv4.tcp_congestion_control)
  ns edge sysctl -qw net.ipv4.tcp_congestion_control=bbr ||
    { echo "the control needs the kernel's BBR (modprobe tcp_bbr)" >&2; return 1; }
  dpid=$(start_direct direct15)
  local url; url=$(direct_url direct15)
  trap 'emu_stop; ip netns exec $P-edge sysctl -qw net.ipv4.tcp_congestion_control='"$cc" EXIT
  emu_start inet emu15 --seed 15 --both delay=20ms,loss=1%
  # The path now has its round trip: a TCP handshake to the direct port
  # takes at least 40 ms (the best of three, so a lost SYN does not count).
  local hostport="${url#http://}"
  local rtt_ms; rtt_ms=$(ns cli python3 - "${hostport%:*}" "${hostport##*:}" <<'EOF'
import socket, sys, time
best = None
for _ in range(3):
    t = time.monotonic()
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10).close()
    ms = (time.monotonic() - t) * 1000
    best = ms if best is None else min(best, ms)
print("%.1f" % best)
EOF
)
  log "  through the emulator: TCP handshake to $hostport in $rtt_ms ms"
  awk -v t="$rtt_ms" 'BEGIN { exit !(t >= 40) }'
  # Both players at once (4 Mbit/s each, no rate limit on the path: they
  # do not compete for it), to keep the scenario near one film's length.
  film_player "http://127.0.0.1:32415/film.mp4" $((FILM_SECS + 15)) >"$W/s15-shim.json" &
  local p1=$!
  film_player "$url/film.mp4" $((FILM_SECS + 15)) >"$W/s15-plain.json" &
  local p2=$!
  wait "$p1" "$p2" || true
  emu_stop
  # Both films went through the emulator, which lost about 1 % each way.
  local st
  st=$(python3 - "$W/emu15.json" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
for k in ("up", "down"):
    print("  emulator %s: %d packets, %d lost (%.2f %%)" % (k, d[k]["packets_in"], d[k]["lost"], 100 * d[k]["lost"] / max(1, d[k]["packets_in"])))
    assert 0.005 <= d[k]["lost"] / max(1, d[k]["packets_in"]) <= 0.02, "the emulator's loss is off"
assert d["down"]["packets_in"] > 20000, "the films did not go through the emulator"
EOF
) || { echo "$st" >&2; return 1; }
  while IFS= read -r l; do log "$l"; done <<<"$st"
  local rc=0 v
  v=$(film_verdict "plain TCP (control, kernel BBR)" "$(cat "$W/s15-plain.json")") || rc=1
  log "  $v"
  [ "$rc" = 0 ] || { echo "the control failed: the emulated path itself cannot carry the film" >&2; return 1; }
  v=$(film_verdict "through hushgate connect" "$(cat "$W/s15-shim.json")") || rc=1
  log "  $v"
  kill "$pid"; kill -INT "$dpid" 2>/dev/null || true
  wait_for "the direct admission's revocation" 10 grep -q "^revoked" "$W/direct15.log" || true
  return "$rc"
}

# ------------------------------------------------------------ metrics (21)

# Prometheus's HTTP API in the edge namespace: the value of one instant
# query (a single series; "none" when it has no sample).
promq() { # promq EXPR
  ns edge curl -sS --max-time 5 -G "http://127.0.0.1:9090/api/v1/query" --data-urlencode "query=$1" |
    python3 -c '
import json, sys
r = json.load(sys.stdin)["data"]["result"]
print(r[0]["value"][1] if r else "none")'
}
# Waits until Prometheus has scraped a value of EXPR that satisfies TEST
# (an awk condition on v), e.g. prom_wait "x" "v >= 3"; prints the value.
prom_wait() { # prom_wait EXPR TEST [SECONDS]
  local expr="$1" test="$2" secs="${3:-30}" v
  local end=$(( $(date +%s) + secs ))
  while :; do
    v=$(promq "$expr")
    if [ "$v" != none ] && awk -v v="$v" "BEGIN { exit !($test) }"; then echo "$v"; return 0; fi
    if [ "$(date +%s)" -ge "$end" ]; then echo "Prometheus never saw $expr with $test (last: $v)" >&2; return 1; fi
    sleep 0.5
  done
}

scenario_21() { # a real Prometheus scrapes the gateway and the control plane; counters move with an admission, a download, a flood and a revocation
  command -v prometheus >/dev/null || { echo "prometheus is missing (apt-get install prometheus)" >&2; return 1; }
  # The gateway's metrics are on loopback only, never on its addresses.
  if ns edge curl -s --max-time 2 http://192.0.2.2:9101/metrics -o /dev/null; then
    echo "the gateway's metrics answer on its LAN address" >&2; return 1
  fi
  ns edge curl -sf --max-time 5 http://127.0.0.1:9101/metrics -o "$W/s21-gw-before.txt"
  grep -q '^hushgate_gateway_datagrams_dropped_total{reason="unknown_source"}' "$W/s21-gw-before.txt"
  mkdir -p "$W/prom"
  cat >"$W/prom/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: hushgate-gateway
    static_configs: [{targets: ["127.0.0.1:9101"]}]
  - job_name: hushgate-control
    static_configs: [{targets: ["203.0.113.2:9102"]}]
EOF
  local prom
  prom=$(bg edge "$W/prometheus.log" prometheus --config.file="$W/prom/prometheus.yml" \
    --storage.tsdb.path="$W/prom/data" --web.listen-address=127.0.0.1:9090)
  wait_for "Prometheus ready" 30 ns edge curl -sf http://127.0.0.1:9090/-/ready
  prom_wait 'up{job="hushgate-gateway"}' "v == 1" >/dev/null
  prom_wait 'up{job="hushgate-control"}' "v == 1" >/dev/null
  local g='job="hushgate-gateway"'
  local installed0 removed0 granted0 logins0 bytes0 kdrop0 hs0
  installed0=$(prom_wait "hushgate_gateway_admissions_installed_total{$g}" "v >= 0")
  removed0=$(prom_wait "hushgate_gateway_admissions_removed_total{$g}" "v >= 0")
  granted0=$(promq 'sum(hushgate_control_access_requests_total{result="granted"})')
  [ "$granted0" = none ] && granted0=0
  logins0=$(promq 'sum(hushgate_control_logins_total{outcome="ok"})')
  [ "$logins0" = none ] && logins0=0
  bytes0=$(promq "hushgate_gateway_service_bytes_total{$g,service=\"plex\",direction=\"from_upstream\"}")
  [ "$bytes0" = none ] && bytes0=0
  kdrop0=$(prom_wait "hushgate_gateway_prefilter_dropped_packets_total{$g,chain=\"tunnel\"}" "v >= 0")
  hs0=$(prom_wait "hushgate_gateway_handshakes_total{$g}" "v >= 0")
  log "  Prometheus scrapes both; before: installed $installed0, removed $removed0, granted $granted0, pre-filter drops $kdrop0"

  # An admission.
  local pid; pid=$(start_shim 32421 shim21)
  local adm; adm=$(sed -n 's/.*(admission \(adm_[0-9a-f]*\),.*/\1/p' "$W/shim21.log" | head -1)
  prom_wait 'sum(hushgate_control_logins_total{outcome="ok"})' "v >= $logins0 + 1" >/dev/null
  prom_wait 'sum(hushgate_control_access_requests_total{result="granted"})' "v >= $granted0 + 1" >/dev/null
  prom_wait "hushgate_gateway_admissions_installed_total{$g}" "v >= $installed0 + 1" >/dev/null
  prom_wait 'hushgate_control_access_gateway_ack_seconds_count' "v >= 1" >/dev/null
  prom_wait 'hushgate_control_access_latency_seconds_count' "v >= 1" >/dev/null
  prom_wait "hushgate_gateway_feed_ack_latency_seconds_count{$g}" "v >= 1" >/dev/null
  prom_wait 'sum(hushgate_control_http_requests_total{route="/v1/access",method="POST",status="200"})' "v >= 1" >/dev/null
  prom_wait 'hushgate_control_database_transaction_seconds_count' "v >= 1" >/dev/null
  prom_wait 'hushgate_control_gateways_connected' "v >= 3" >/dev/null
  prom_wait 'hushgate_control_live_admissions' "v >= 1" >/dev/null
  prom_wait "hushgate_gateway_peers{$g}" "v >= 1" >/dev/null
  # The port mapping is in exactly one state.
  prom_wait "sum(hushgate_gateway_port_mapping_state{$g})" "v == 1" >/dev/null
  log "  admission $adm: login, granted access, both ack latencies, installed admission and live admissions seen"

  # A download.
  fetch 32421 "$W/s21.bin"
  check_sha "$W/s21.bin"
  local bytes1
  bytes1=$(prom_wait "hushgate_gateway_service_bytes_total{$g,service=\"plex\",direction=\"from_upstream\"}" "v >= $bytes0 + $((FILE_MIB << 20))")
  prom_wait "hushgate_gateway_handshakes_total{$g}" "v >= $hs0 + 1" >/dev/null
  prom_wait "hushgate_gateway_service_connections_total{$g,service=\"plex\"}" "v >= 1" >/dev/null
  prom_wait "hushgate_gateway_upstream_up{$g,service=\"plex\",kind=\"tunnel\"}" "v == 1" >/dev/null
  log "  download of $FILE_MIB MiB: plex bytes from the upstream $bytes0 -> $bytes1"

  # A flood from the attacker: the kernel pre-filter drops it, and says so.
  junk 5000
  local kdrop1
  kdrop1=$(prom_wait "hushgate_gateway_prefilter_dropped_packets_total{$g,chain=\"tunnel\"}" "v >= $kdrop0 + 5000")
  log "  5000 junk datagrams from the attacker: pre-filter drops $kdrop0 -> $kdrop1"

  # A revocation.
  admin admission revoke "$adm" >/dev/null
  prom_wait "hushgate_gateway_admissions_removed_total{$g}" "v >= $removed0 + 1" >/dev/null
  prom_wait 'sum(hushgate_control_http_requests_total{route="/v1/admissions/{id}",method="DELETE"})' "v >= 1" >/dev/null
  wait_for "the shim to exit after revocation" 15 bash -c "! kill -0 $pid 2>/dev/null"
  log "  revocation: the removal counted at the gateway, the request at the control plane"

  # Never a user, key or address in a label.
  ns edge curl -sf --max-time 5 http://127.0.0.1:9101/metrics -o "$W/s21-gw.txt"
  ns edge curl -sf --max-time 5 http://203.0.113.2:9102/metrics -o "$W/s21-ctl.txt"
  local leak
  for leak in alice 203.0.113.34 198.51.100.2 "$adm"; do
    if grep -qF -- "$leak" "$W/s21-gw.txt" "$W/s21-ctl.txt"; then echo "the metrics name $leak" >&2; return 1; fi
  done
  # Without --metrics-per-server the live admissions are one total.
  if grep -q 'live_admissions{server=' "$W/s21-ctl.txt"; then echo "live admissions labelled by server" >&2; return 1; fi
  # The dashboard in deploy/ asks only for metrics that exist, and
  # Prometheus takes each of its queries.
  local names; names=$(grep -o 'hushgate_[a-z_]*' "$ROOT/deploy/grafana-dashboard.json" | sed 's/_bucket$//' | sort -u)
  for n in $names; do
    grep -q "^$n" "$W/s21-gw.txt" "$W/s21-ctl.txt" || { echo "the dashboard asks for $n, which is not served" >&2; return 1; }
  done
  python3 - "$ROOT/deploy/grafana-dashboard.json" >"$W/s21-queries.txt" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
for p in d["panels"]:
    for t in p.get("targets", []):
        print(t["expr"].replace("$__rate_interval", "1m").replace("$gateway_job", "hushgate-gateway").replace("$control_job", "hushgate-control"))
EOF
  local q n=0
  while IFS= read -r q; do
    grep -q '"status":"success"' <<<"$(ns edge curl -sS --max-time 5 -G http://127.0.0.1:9090/api/v1/query --data-urlencode "query=$q")" ||
      { echo "Prometheus refuses the dashboard's query: $q" >&2; return 1; }
    n=$((n + 1))
  done <"$W/s21-queries.txt"
  log "  deploy/grafana-dashboard.json: $(wc -w <<<"$names") metrics all served, $n queries all taken by Prometheus"
  kill "$prom"; wait "$prom" 2>/dev/null || true
}

# ------------------------------------------------- tenants (22)

# `hushgate servers` as account $1 from namespace $2 (its own credentials,
# the password on standard input's environment, never an argument).
owner_cli() { # owner_cli USER NS ARGS...
  local who="$1" where="$2"; shift 2
  HUSHGATE_PASSWORD="$PASSWORD" ns "$where" "$BIN" servers --control https://203.0.113.2:8443 \
    --ca "$W/ctl/ca.pem" --user "$who" "$@"
}

# An account's user token, by a login through the API from namespace $2.
api_token() { # api_token USER NS
  printf '{"username":"%s","password":"%s"}' "$1" "$PASSWORD" >"$W/s22-login.json"
  ns "$2" curl -sS --max-time 10 --cacert "$W/ctl/ca.pem" -H 'content-type: application/json' \
    --data @"$W/s22-login.json" https://203.0.113.2:8443/v1/login | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])'
  rm -f "$W/s22-login.json"
}

# STATUS and body of an API call from namespace $1 with token $2.
api_call() { # api_call NS TOKEN METHOD PATH OUTFILE
  ns "$1" curl -sS --max-time 10 --cacert "$W/ctl/ca.pem" -H "authorization: Bearer $2" \
    -X "$3" -o "$5" -w '%{http_code}' "https://203.0.113.2:8443$4"
}

scenario_22() { # a second owner, from another host, cannot see or revoke the first owner's admissions (404, as for unknown ones) while the first owner's friend downloads on, intact
  echo "$PASSWORD" | admin user add olga >/dev/null
  echo "$PASSWORD" | admin user add dora >/dev/null
  echo "$PASSWORD" | admin user add mallory >/dev/null
  # olga registers her server herself, from the client's host, and her
  # gateway (UDP 51829 behind the home router) enrolls with the token.
  local token; token=$(owner_cli olga cli add olgas | tail -1)
  ns home nft add rule inet home pre iifname wan ip daddr 203.0.113.18 udp dport 51829 dnat ip to 192.0.2.2:51829
  ns home nft add rule inet home forward iifname wan ip daddr 192.0.2.2 udp dport 51829 accept
  local gpid; gpid=$(start_gateway gwo "$W/gwo" 0.0.0.0:51829 203.0.113.18:51829 "$token")
  wait_gateway_synced gwo
  owner_cli olga cli share olgas dora >/dev/null
  # mallory: an account and a server of her own, from the attacker's host.
  owner_cli mallory atk add mallorys >/dev/null

  # dora downloads through her shim at a pace that outlasts the attempts.
  local pid; pid=$(start_shim 32422 shim22 dora https://203.0.113.2:8443 olgas)
  local adm; adm=$(sed -n 's/.*(admission \(adm_[0-9a-f]*\),.*/\1/p' "$W/shim22.log" | head -1)
  [ -n "$adm" ]
  fetch 32422 "$W/s22.bin" --limit-rate 1M &
  local dl=$!
  sleep 1

  # Through the CLI: every view and change of olga's server is "no server
  # named 'olgas'", and her friend's admission is unknown to mallory.
  local out what
  for what in admissions shares invitations devices audit show; do
    if out=$(owner_cli mallory atk "$what" olgas 2>&1); then
      echo "mallory's 'servers $what olgas' succeeded: $out" >&2; return 1
    fi
    grep -q "no server named 'olgas'" <<<"$out" || { echo "servers $what: $out" >&2; return 1; }
  done
  if out=$(owner_cli mallory atk revoke "$adm" 2>&1); then
    echo "mallory revoked olga's admission: $out" >&2; return 1
  fi
  grep -q "404" <<<"$out" || { echo "revoke: $out" >&2; return 1; }
  if grep -q olgas <<<"$(owner_cli mallory atk list)"; then
    echo "mallory's server list shows olga's server" >&2; return 1
  fi
  # Through the API: the same answers, word for word, as for things that
  # do not exist.
  local mt; mt=$(api_token mallory atk)
  local s1 s2
  s1=$(api_call atk "$mt" DELETE "/v1/admissions/$adm" "$W/s22-theirs.json")
  s2=$(api_call atk "$mt" DELETE "/v1/admissions/adm_00000000000000000000000000" "$W/s22-unknown.json")
  [ "$s1" = 404 ] && [ "$s2" = 404 ] || { echo "DELETE answered $s1 / $s2" >&2; return 1; }
  cmp -s "$W/s22-theirs.json" "$W/s22-unknown.json" || { echo "the answers differ: $(cat "$W/s22-theirs.json") vs $(cat "$W/s22-unknown.json")" >&2; return 1; }
  s1=$(api_call atk "$mt" GET /v1/servers/olgas/admissions "$W/s22-theirs.json")
  s2=$(api_call atk "$mt" GET /v1/servers/nosuch/admissions "$W/s22-unknown.json")
  [ "$s1" = 404 ] && [ "$s2" = 404 ] || { echo "GET answered $s1 / $s2" >&2; return 1; }
  [ "$(sed 's/olgas/X/' "$W/s22-theirs.json")" = "$(sed 's/nosuch/X/' "$W/s22-unknown.json")" ] || {
    echo "the answers differ: $(cat "$W/s22-theirs.json") vs $(cat "$W/s22-unknown.json")" >&2; return 1; }

  # Meanwhile the download went on, and ends intact.
  kill -0 "$dl" 2>/dev/null || { echo "the download had ended before the attempts were over" >&2; return 1; }
  wait "$dl"
  check_sha "$W/s22.bin"
  log "  every attempt of mallory's (6 views and a revocation through the CLI, 2 API calls) got 404; dora's $FILE_MIB MiB arrived with a matching sha256"
  # olga still sees (and may end) the admission, and no trace of mallory
  # is in her server's audit.
  grep -q "$adm" <<<"$(owner_cli olga cli admissions olgas)"
  if grep -q mallory <<<"$(owner_cli olga cli audit olgas --limit 500)"; then
    echo "olga's audit shows mallory" >&2; return 1
  fi
  kill "$pid" "$gpid" 2>/dev/null; wait "$pid" "$gpid" 2>/dev/null || true
}

scenario_18() { # three control plane replicas on one PostgreSQL: replica 1, which holds the gateway's feed, killed with SIGKILL mid-download
  [ "$CONTROL_DB" = sqlite ] || { echo "scenario 18 starts and stops its own PostgreSQL: run it without CONTROL_DB=postgres" >&2; return 1; }
  start_postgres ctl
  local db="host=$PG_SOCK user=hushgate dbname=hushgate" rb="$W/replicas-bundle" i
  ns ctl "$PG_BIN/createdb" -h "$PG_SOCK" -U hushgate --owner hushgate hushgate
  # As docs/operating.md, "Running several replicas", says: one bundle,
  # copied (without the CA's key) to each replica's own state folder;
  # each replica on an address of its own.
  HUSHGATE_DATABASE="$db" ns ctl "$BIN" control init --state "$rb" \
    --san 203.0.113.3 --san 203.0.113.4 --san 203.0.113.5 >/dev/null
  local urls=() rpid=()
  for i in 1 2 3; do
    ns ctl ip addr add "203.0.113.$((i + 2))/28" dev eth0
    install -d -m 700 "$W/r$i"
    cp -p "$rb"/{ca.pem,server.pem,server-key.pem,admin-token} "$W/r$i/"
    urls[i]="https://203.0.113.$((i + 2)):8444"
    rpid[i]=$(HUSHGATE_DATABASE="$db" bg ctl "$W/replica$i.log" "$BIN" control \
      --listen "203.0.113.$((i + 2)):8444" --state "$W/r$i" --login-rate 1000)
  done
  for i in 1 2 3; do
    wait_for "replica $i" 20 ns ctl curl -sf --cacert "$rb/ca.pem" "${urls[i]}/v1/health" -o /dev/null
  done
  radmin() { local i="$1"; shift; ns ctl "$BIN" admin --state "$W/r$i" "$@"; }
  echo "$PASSWORD" | radmin 1 user add dave >/dev/null
  local token; token=$(radmin 1 server add rep --binding exact --ttl 60 | tail -1)
  radmin 1 grant add dave rep >/dev/null
  # The home router forwards this gateway's port too.
  ns home nft add rule inet home pre iifname wan ip daddr 203.0.113.18 udp dport 51828 dnat ip to 192.0.2.2:51828
  ns home nft add rule inet home forward iifname wan ip daddr 192.0.2.2 udp dport 51828 accept
  # The gateway knows all three and starts on the first: its feed is on
  # replica 1.
  local all; all=$(IFS=,; echo "${urls[*]}")
  HUSHGATE_ENROLL_TOKEN="$token" bg edge "$W/gwr.log" "$BIN" gateway --control "$all" \
    --ca "$rb/ca.pem" --state "$W/gwr" --listen-udp 0.0.0.0:51828 \
    --public-endpoint 203.0.113.18:51828 --service plex=32400:127.0.0.1:32400 >/dev/null
  wait_gateway_synced gwr
  # Which replicas the gateway (the home router's address) is connected to.
  gw_on() { ns ctl ss -tnH state established '( sport = :8444 )' | awk '$4 ~ /^203\.0\.113\.18:/ { sub(/:8444$/, "", $3); print $3 }' | sort -u | tr '\n' ' '; }
  local on; on=$(gw_on)
  log "  the gateway's feed is on: $on"
  [ "$on" = "203.0.113.3 " ]

  # Dave's client asks replica 2 (and knows replica 3), and downloads.
  local pid; pid=$(start_shim 32418 shim18 dave "${urls[2]},${urls[3]}" rep "$rb/ca.pem")
  local adm; adm=$(sed -n 's/.*(admission \(adm_[0-9a-f]*\),.*/\1/p' "$W/shim18.log" | head -1)
  [ -n "$adm" ]
  slow_player 127.0.0.1 32418 "$W/s18-progress" >"$W/s18-player.log" 2>&1 &
  local player=$!
  progress() { cat "$W/s18-progress" 2>/dev/null || echo 0; }
  wait_for "the download to start" 10 bash -c "[ \$(cat $W/s18-progress 2>/dev/null || echo 0) -gt 1000000 ]"

  kill -9 "${rpid[1]}"
  local t0; t0=$(date +%s.%N)
  wait_for "replica 1 to die" 5 bash -c "! kill -0 ${rpid[1]} 2>/dev/null"
  local at_kill; at_kill=$(progress)
  # A new access through replica 3 works within 5 s of the kill: the
  # gateway must have moved for its acknowledgement to arrive (the shim
  # retries a refusal on its own; it is given until then).
  local pid3 rc=0
  pid3=$(HUSHGATE_PASSWORD="$PASSWORD" bg cli "$W/shim18b.log" "$BIN" connect --control "${urls[3]}" \
    --ca "$rb/ca.pem" --user dave --server rep --listen 127.0.0.1:32428)
  wait_for "the access through replica 3" 5 grep -q "^ready:" "$W/shim18b.log" || rc=1
  local ready_in; ready_in=$(since "$t0")
  log "  replica 1 killed; a new access through replica 3 ready $ready_in s after the kill"
  [ "$rc" = 0 ] || { cat "$W/shim18b.log" >&2; return 1; }
  ns cli curl -sf --max-time 5 http://127.0.0.1:32428/identity >/dev/null
  on=$(gw_on)
  log "  the gateway is now connected to: $on"
  [ -n "$on" ] && [[ "$on" != *203.0.113.3* ]]
  # The download went on through the kill.
  wait_for "the download to go on" 10 bash -c "[ \$(cat $W/s18-progress) -gt $((at_kill + 2000000)) ]"
  kill -0 "$player"
  log "  the download went on: $at_kill bytes at the kill, $(progress) now"

  # A revocation through replica 2 ends it within a second.
  local t1; t1=$(date +%s.%N)
  radmin 2 admission revoke "$adm" >/dev/null
  local prc=0; wait "$player" || prc=$?
  local took; took=$(since "$t1")
  log "  revoked through replica 2: the download ended $took s later (player exit $prc: $(tail -1 "$W/s18-player.log"))"
  [ "$prc" = 1 ]
  awk -v t="$took" 'BEGIN { exit !(t < 1.0) }'

  # PostgreSQL restarted. While it is down, a new access is refused saying
  # so, and the gateway keeps what it has (the client admitted through
  # replica 3 still gets through); once it is back the replicas reconnect
  # by themselves.
  stop_postgres
  local out; rc=0
  out=$(HUSHGATE_PASSWORD="$PASSWORD" ns cli timeout 30 "$BIN" connect --control "${urls[2]}" \
    --ca "$rb/ca.pem" --user dave --server rep --listen 127.0.0.1:32438 2>&1) || rc=$?
  log "  PostgreSQL stopped: a new access request: exit $rc: $(echo "$out" | tail -1 | cut -c1-120)"
  [ "$rc" != 0 ]
  grep -q "cannot reach its database" <<<"$out"
  ns cli curl -sf --max-time 5 http://127.0.0.1:32428/identity >/dev/null
  start_postgres ctl
  local t2; t2=$(date +%s.%N)
  wait_for "an access through replica 2 after the restart" 30 bash -c "HUSHGATE_PASSWORD='$PASSWORD' \
    ip netns exec $P-cli timeout 20 $BIN connect --control ${urls[2]} --ca $rb/ca.pem --user dave \
    --server rep --wg-config $W/s18.conf"
  log "  PostgreSQL back: an access through replica 2 worked $(since "$t2") s after it started"
  kill "$pid" "$pid3" 2>/dev/null; wait "$pid" "$pid3" 2>/dev/null || true
  stop_postgres
}

# ---------------------------------------------------------------- main

# Scenarios 19 (chaos) and 20 (control plane down for a long time).
# shellcheck source=tests/netns/chaos.sh
. "$HERE/chaos.sh"
# A file of extra scenarios (e.g. bench/soak.sh's scenario_soak), sourced
# here so that they run in this harness's world.
if [ -n "${HARNESS_EXTRA:-}" ]; then
  # shellcheck disable=SC1090
  . "$HARNESS_EXTRA"
fi

if [ "$#" -gt 0 ]; then WANT=("$@"); else WANT=(1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22); fi
log "building the topology ($P)"
build_topology
setup_world
log "world up: control plane, gateway ($(grep -o 'key [^ ,)]*' "$W/gw.log" | head -1)), media server"
for s in "${WANT[@]}"; do
  name=$(grep -h -m1 "^scenario_$s()" "$0" "$HERE/chaos.sh" ${HARNESS_EXTRA:+"$HARNESS_EXTRA"} | sed 's/.*# //' | head -1)
  log "scenario $s: $name"
  # Not inside `if`: bash ignores errexit in a tested command.
  set +e
  ( set -e; "scenario_$s" )
  rc=$?
  set -e
  if [ "$rc" = 0 ]; then
    PASSED=$((PASSED + 1)); log "scenario $s: ok"
  else
    FAILED=$((FAILED + 1)); FAILED_NAMES+=("$s"); log "scenario $s: FAILED"
    for f in "$W"/*.log; do echo "--- $f"; tail -5 "$f"; done >&2
  fi
done
echo "netns: $PASSED passed, $FAILED failed${FAILED_NAMES:+ (scenarios ${FAILED_NAMES[*]})}"
[ "$FAILED" = 0 ]
