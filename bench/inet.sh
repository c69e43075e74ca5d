# Internet conditions (issue 12), sourced by bench/run.sh (it uses its
# topology, services and helpers). Not run by itself.
#
# The emulator (tools/netem, `hushgate-netem`) sits in the "inet" namespace
# as a transparent router hop between the client side (i-cnat) and the
# home side (i-home): see `emu_rules` in tests/netns/lib.sh. Everything
# between the two sides goes through it while it runs (the tunnels' UDP,
# the plain TCP of the control rows); nothing else does (control plane,
# attacker). One emulator per condition, the same seed for every
# condition, restarted between conditions.
#
# Parts (each can be skipped with SKIP):
# - ceiling: the emulator with a perfect wire (no delay, no loss): plain
#   TCP and the hushgate shim with and without it, and UDP floods of
#   1400-byte datagrams (GSO batches and one per sendmsg) at whatever rate
#   the flooder reaches: packets per second through it, its CPU, drops.
# - inet: one iperf3 run per (condition, mode, path), REPS rounds
#   interleaved: conditions = round trips x losses (loss in both
#   directions, the round trip split evenly) and a rate-limited bottleneck
#   with a shallow and a deep queue; modes 1R (one stream server->client,
#   the player's direction), 4R, 1 (client->server); paths `hg` (hushgate
#   connect -> gateway), `hgwg` (wireguard-go with `hushgate connect
#   --wg-config` -> gateway: kernel TCP at the client, the gateway's stack
#   at the server), `cubic` and `bbr` (wireguard-go both ends, kernel TCP
#   with that congestion control, `iperf3 -C`). After INET_OMIT seconds of
#   each run the emulator's counters are reset (SIGUSR1), so the queue
#   sojourn times cover the measured window only.
# - players: PLAYERS shims, one tunnel each, each reading a stream paced at
#   PLAYERS_MBPS from a paced sender beside the media server, through the
#   emulator with PLAYERS_SPEC; each player's rate and the gateway's CPU.

INET_RTTS="${INET_RTTS:-0 20 80 200}"
INET_LOSSES="${INET_LOSSES:-0 0.1 1 3}"
INET_POINTS="${INET_POINTS:-}"
INET_MODES="${INET_MODES:-1R 4R 1}"
INET_PATHS="${INET_PATHS:-hg hgwg cubic bbr}"
INET_BOTTLENECK="${INET_BOTTLENECK:-shallow deep}"
INET_BN_RTT="${INET_BN_RTT:-40}"
INET_BN_RATE="${INET_BN_RATE:-50mbit}"
INET_SHALLOW="${INET_SHALLOW:-10ms}"
INET_DEEP="${INET_DEEP:-500ms}"
INET_SECS="${INET_SECS:-8}"
INET_OMIT="${INET_OMIT:-2}"
INET_REPS="${INET_REPS:-3}"
INET_SEED="${INET_SEED:-1}"
PLAYERS="${PLAYERS:-50}"
PLAYERS_MBPS="${PLAYERS_MBPS:-20}"
PLAYERS_SECS="${PLAYERS_SECS:-20}"
PLAYERS_SPEC="${PLAYERS_SPEC:-delay=10ms}"
INET_KNOBS="INET_RTTS INET_LOSSES INET_POINTS INET_MODES INET_PATHS INET_BOTTLENECK INET_BN_RTT INET_BN_RATE INET_SHALLOW INET_DEEP INET_SECS INET_OMIT INET_REPS INET_SEED PLAYERS PLAYERS_MBPS PLAYERS_SECS PLAYERS_SPEC"
for p in $INET_PATHS; do
  case "$p" in hg | hgwg | cubic | bbr) ;; *) echo "bench: INET_PATHS: unknown path '$p' (use hg, hgwg, cubic, bbr)" >&2; exit 2 ;; esac
done
for m in $INET_MODES; do
  case "$m" in 1 | 1R | 4 | 4R) ;; *) echo "bench: INET_MODES: unknown mode '$m' (use 1, 1R, 4, 4R)" >&2; exit 2 ;; esac
done

# The stock WireGuard client of the `hgwg` rows: wireguard-go in the
# client's namespace with the configuration `hushgate connect --wg-config`
# writes (an admission of its own, for server home, service iperf).
inet_setup() {
  HUSHGATE_PASSWORD="$PASSWORD" ns cli "$BIN" connect --control https://203.0.113.2:8443 \
    --ca "$W/ctl/ca.pem" --user alice --server home --service iperf --wg-config "$W/stock.conf" >"$W/stock.log" 2>&1 ||
    { cat "$W/stock.log" >&2; exit 1; }
  local ifc="${P}s"
  WG_PROCESS_FOREGROUND=1 bg cli "$W/$ifc.log" wireguard-go -f "$ifc" >/dev/null
  wait_for "wireguard-go $ifc" 10 ns cli ip link show "$ifc"
  grep -v '^Address' "$W/stock.conf" | grep -v '^#' >"$W/stock.wg"
  ns cli wg setconf "$ifc" "$W/stock.wg"
  ns cli ip addr add "$(sed -n 's/^Address = //p' "$W/stock.conf")" dev "$ifc"
  ns cli ip link set "$ifc" mtu 1420 up
  STOCK_SVC=$(sed -n 's/^AllowedIPs = \([0-9.]*\).*/\1/p' "$W/stock.conf")
  ns cli ip route add "$STOCK_SVC/32" dev "$ifc"
  wait_for "the stock client's tunnel" 10 ns cli curl -sf --max-time 1 "http://$STOCK_SVC:32400/identity"
}

emu_cpu() { awk '{ print $14 + $15 }' "/proc/$EMU_PID/stat" 2>/dev/null || echo 0; }
tun_drops() { ns inet cat /sys/class/net/emu-down/statistics/tx_dropped /sys/class/net/emu-up/statistics/tx_dropped 2>/dev/null | awk '{ s += $1 } END { print s + 0 }'; }

# inet_iperf PATH MODE OUTFILE: one iperf3 run (INET_OMIT + INET_SECS s);
# the emulator's counters are reset when the omitted part ends.
inet_iperf() {
  local path="$1" mode="$2" out="$3" host port args=()
  case "$path" in
    hg) host=127.0.0.1; port=5301 ;;
    hgwg) host=$STOCK_SVC; port=5201 ;;
    cubic) host=203.0.113.193; port=5203; args=(-C cubic) ;;
    bbr) host=203.0.113.193; port=5203; args=(-C bbr) ;;
    plain) host=203.0.113.18; port=5202 ;;
  esac
  case "$mode" in
    1) ;; 1R) args+=(-R) ;; 4) args+=(-P 4) ;; 4R) args+=(-P 4 -R) ;;
  esac
  ns cli timeout $((INET_SECS + INET_OMIT + 40)) iperf3 -c "$host" -p "$port" -t "$INET_SECS" -O "$INET_OMIT" \
    -J "${args[@]}" >"$out" 2>&1 &
  local ip=$!
  sleep "$INET_OMIT"
  if [ -n "${EMU_PID:-}" ]; then kill -USR1 "$EMU_PID" 2>/dev/null || true; fi
  wait "$ip" || true
}

# inet_result JSON: "mbps congestion" from an iperf3 JSON (0 on failure).
inet_result() {
  python3 - "$1" <<'EOF'
import json, sys
try:
    d = json.load(open(sys.argv[1]))
    e = d["end"]
    print("%.1f %s" % (e["sum_received"]["bits_per_second"] / 1e6, e.get("sender_tcp_congestion", "-")))
except Exception:
    print("0 failed")
EOF
}

# emu_dir_stats JSON DIR: "packets_in lost queue_drops pool_drops p50_ms p90_ms p99_ms max_ms"
emu_dir_stats() {
  python3 - "$1" "$2" <<'EOF'
import json, sys
try:
    d = json.load(open(sys.argv[1]))[sys.argv[2]]
    q = d["queue_wait"]
    print(d["packets_in"], d["lost"], d["queue_drops"], d["pool_drops"],
          *("%.2f" % (q[k] / 1000) for k in ("p50_us", "p90_us", "p99_us", "max_us")))
except Exception:
    print("0 0 0 0 - - - -")
EOF
}

# inet_point TAG EMULATOR-ARGS...: every mode x path x rep under one condition.
inet_point() {
  local tag="$1"; shift
  local rep mode path v cong c0 c1 d0 d1 dir st
  emu_start inet "emu-$tag" --seed "$INET_SEED" "$@"
  for rep in $(seq "$INET_REPS"); do
    for mode in $INET_MODES; do
      case "$mode" in *R) dir=down ;; *) dir=up ;; esac
      for path in $INET_PATHS; do
        c0=$(emu_cpu); d0=$(tun_drops)
        local t0; t0=$(date +%s.%N)
        inet_iperf "$path" "$mode" "$W/inet-$tag-$mode-$path-$rep.json"
        local secs; secs=$(since "$t0")
        c1=$(emu_cpu); d1=$(tun_drops)
        sleep 0.3   # the stats file is rewritten every 250 ms
        read -r v cong < <(inet_result "$W/inet-$tag-$mode-$path-$rep.json")
        st=$(emu_dir_stats "$W/emu-$tag.json" "$dir")
        # tag mode path rep mbps congestion emu_cpu_share tun_drops, then
        # the data direction's packets lost queue_drops pool_drops wait p50 p90 p99 max (ms)
        echo "$tag $mode $path $rep $v $cong $(awk -v a="$c0" -v b="$c1" -v s="$secs" 'BEGIN { printf "%.2f", (b - a) / 100 / s }') $((d1 - d0)) $st" >>"$W/inet.txt"
        log "  [$tag] rep $rep $mode $path: $v Mbit/s ($cong); emulator CPU $(tail -1 "$W/inet.txt" | cut -d' ' -f7), TUN drops $((d1 - d0)); $dir: $st"
      done
    done
  done
  kill -0 "$EMU_PID" 2>/dev/null || { echo "bench: the emulator for $tag died; see $W/emu-$tag.log" >&2; exit 1; }
  emu_stop
}

# One-way delay for a round trip in ms ("0" stays 0).
half() { awk -v r="$1" 'BEGIN { printf "%gms", r / 2 }'; }

inet_matrix() {
  : >"$W/inet.txt"
  local points=() rtt loss
  if [ -n "$INET_POINTS" ]; then
    read -r -a points <<<"$INET_POINTS"
  else
    for rtt in $INET_RTTS; do for loss in $INET_LOSSES; do points+=("$rtt/$loss"); done; done
  fi
  local pt
  for pt in "${points[@]}"; do
    rtt="${pt%/*}"; loss="${pt#*/}"
    log "conditions: round trip $rtt ms, loss $loss % each way"
    inet_point "rtt$rtt-loss$loss" --both "delay=$(half "$rtt"),loss=$loss%"
  done
  local q
  for q in $INET_BOTTLENECK; do
    local depth
    case "$q" in shallow) depth=$INET_SHALLOW ;; deep) depth=$INET_DEEP ;; *) echo "bench: INET_BOTTLENECK: unknown '$q' (shallow, deep)" >&2; exit 2 ;; esac
    log "conditions: $INET_BN_RATE bottleneck each way, $q queue ($depth), round trip $INET_BN_RTT ms"
    inet_point "bn-$q" --both "delay=$(half "$INET_BN_RTT"),rate=$INET_BN_RATE,queue=$depth"
  done
}

# ---------------------------------------------------------------- ceiling

# A pool of 1400-byte datagrams for the flooder (the tunnel's size).
make_fat_pool() {
  python3 - "$1" <<'EOF'
import os, struct, sys
with open(sys.argv[1], "wb") as f:
    for _ in range(64):
        f.write(struct.pack("<H", 1400) + os.urandom(1400))
EOF
}

# emu_ceiling: the emulator's own limit, on a perfect wire.
emu_ceiling() {
  : >"$W/ceiling.txt"
  make_fat_pool "$W/fat.pool"
  local rep v cong c0 c1 t0 secs
  for rep in $(seq "$REPS"); do
    for path in plain hg; do
      [ "$path" = plain ] && plain_on
      EMU_PID="" inet_iperf "$path" 1R "$W/ceil-direct.json"
      v=$(inet_result "$W/ceil-direct.json" | cut -d' ' -f1)
      echo "direct $path $rep $v" >>"$W/ceiling.txt"
      emu_start inet emu-ceil
      c0=$(emu_cpu); t0=$(date +%s.%N)
      inet_iperf "$path" 1R "$W/ceil-$path.json"
      secs=$(since "$t0"); c1=$(emu_cpu)
      sleep 0.3
      local pk; pk=$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d["down"]["packets_out"], d["down"]["secs"], d["down"]["reads"], d["down"]["writes"])' "$W/emu-ceil.json")
      emu_stop
      [ "$path" = plain ] && plain_off
      v=$(inet_result "$W/ceil-$path.json" | cut -d' ' -f1)
      echo "emu $path $rep $v $(awk -v a="$c0" -v b="$c1" -v s="$secs" 'BEGIN { printf "%.2f", (b - a) / 100 / s }') $pk" >>"$W/ceiling.txt"
      log "  ceiling rep $rep: $path 1R direct $(grep "^direct $path $rep " "$W/ceiling.txt" | cut -d' ' -f4), through the emulator $v Mbit/s; emulator: $(tail -1 "$W/ceiling.txt" | cut -d' ' -f5-) (CPU share, packets out, secs, reads, writes)"
    done
    for gso in 64 1; do
      emu_start inet emu-ceil
      local d0 d1
      d0=$(tun_drops); c0=$(emu_cpu)
      ns cli "$FLOOD" --dst 203.0.113.18:9 --kind pool --pool "$W/fat.pool" --secs 4 --max 40000000 --gso "$gso" >"$W/ceil-flood.out" 2>&1 || true
      sleep 0.3
      c1=$(emu_cpu); d1=$(tun_drops)
      sleep 0.3
      local st; st=$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1]))["up"]; print(d["packets_in"], d["packets_out"], d["pool_drops"], d["reads"], d["writes"])' "$W/emu-ceil.json")
      emu_stop
      local sent; sent=$(awk '{ print $2 }' "$W/ceil-flood.out")
      echo "flood $gso $rep ${sent:-0} $st $((d1 - d0)) $(awk -v a="$c0" -v b="$c1" 'BEGIN { printf "%.2f", (b - a) / 100 }')" >>"$W/ceiling.txt"
      log "  ceiling rep $rep: UDP flood, $gso per sendmsg, 4 s: sent ${sent:-0}; emulator in out pool_drops reads writes: $st; TUN drops $((d1 - d0)); emulator CPU s $(tail -1 "$W/ceiling.txt" | awk '{ print $NF }')"
    done
  done
}

# ---------------------------------------------------------------- players

# A sender paced at a fixed rate per connection, beside the media server
# (edge, 127.0.0.1:5204; the gateway's service `media`): a connection
# sends one line "BITS_PER_SECOND SECONDS" and gets that rate for that
# long, sent every 10 ms; after a stall it catches up (a player refilling
# its buffer).
start_paced() {
  cat >"$W/paced.py" <<'EOF'
import asyncio
CHUNK = bytes(1 << 20)
async def serve(reader, writer):
    loop = asyncio.get_running_loop()
    try:
        rate, secs = map(float, (await reader.readline()).split())
        t0 = loop.time(); sent = 0
        while (now := loop.time()) - t0 < secs:
            due = int(rate / 8 * (now - t0)) - sent
            while due > 0:
                n = min(due, len(CHUNK)); writer.write(memoryview(CHUNK)[:n]); sent += n; due -= n
            await writer.drain()
            await asyncio.sleep(0.01)
    except (OSError, ValueError):
        pass
    finally:
        writer.close()
async def main():
    srv = await asyncio.start_server(serve, "127.0.0.1", 5204, backlog=256)
    async with srv:
        await srv.serve_forever()
asyncio.run(main())
EOF
  bg edge "$W/paced.log" python3 "$W/paced.py" >/dev/null
  wait_for "the paced sender" 5 bash -c "ip netns exec $P-edge ss -ltn | grep -q '127.0.0.1:5204'"
}

players() {
  start_paced
  local i pids=()
  log "players: starting $PLAYERS shims (service media, one tunnel each)"
  for i in $(seq 0 $((PLAYERS - 1))); do
    HUSHGATE_PASSWORD="$PASSWORD" bg cli "$W/player-$i.log" "$BIN" connect --control https://203.0.113.2:8443 \
      --ca "$W/ctl/ca.pem" --user alice --server home --service media --listen "127.0.0.1:$((5500 + i))" >/dev/null
  done
  for i in $(seq 0 $((PLAYERS - 1))); do
    wait_for "player shim $i" 60 grep -q "^ready:" "$W/player-$i.log" || { tail -3 "$W/player-$i.log" >&2; exit 1; }
    pids+=("$(find_pid cli "listen 127.0.0.1:$((5500 + i))")")
  done
  emu_start inet emu-players --seed "$INET_SEED" --both "$PLAYERS_SPEC"
  local warm=3
  local g0 g1 s0 s1 e0 e1 t0
  # The window: the client measures bytes from warm s to warm+PLAYERS_SECS s.
  ns cli python3 - "$PLAYERS" "$PLAYERS_MBPS" "$PLAYERS_SECS" "$warm" >"$W/players.out" 2>"$W/players.err" <<'EOF' &
import asyncio, json, sys, time
n, mbps, secs, warm = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
async def player(i, t0, res):
    r, w = await asyncio.open_connection("127.0.0.1", 5500 + i)
    w.write(b"%d %f\n" % (int(mbps * 1e6), warm + secs + 1)); await w.drain()
    got = 0; last = None; gap = 0.0
    while True:
        b = await r.read(1 << 16)
        now = time.monotonic() - t0
        if not b: break
        if warm <= now <= warm + secs:
            got += len(b)
            if last is not None: gap = max(gap, now - last)
            last = now
    res[i] = (got * 8 / secs / 1e6, gap)
async def main():
    res = {}
    t0 = time.monotonic()
    await asyncio.gather(*(player(i, t0, res) for i in range(n)), return_exceptions=True)
    print(json.dumps([res.get(i, (0.0, None)) for i in range(n)]))
asyncio.run(main())
EOF
  local cl=$!
  sleep "$warm"
  g0=$(cpu_of "$GW_PID"); e0=$(emu_cpu); t0=$(date +%s.%N)
  s0=$(for p in "${pids[@]}"; do cpu_of "$p"; done | awk '{ s += $1 } END { print s }')
  sleep "$PLAYERS_SECS"
  g1=$(cpu_of "$GW_PID"); e1=$(emu_cpu)
  s1=$(for p in "${pids[@]}"; do cpu_of "$p"; done | awk '{ s += $1 } END { print s }')
  local secs; secs=$(since "$t0")
  local load; load=$(cut -d' ' -f1-3 /proc/loadavg)
  wait "$cl" || true
  emu_stop
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  python3 - "$W/players.out" "$PLAYERS_MBPS" "$g0" "$g1" "$s0" "$s1" "$e0" "$e1" "$secs" "$load" >"$W/players.txt" <<'EOF'
import json, statistics, sys
res = json.load(open(sys.argv[1]))
rate = float(sys.argv[2]); g = float(sys.argv[4]) - float(sys.argv[3])
s = float(sys.argv[6]) - float(sys.argv[5]); e = (float(sys.argv[8]) - float(sys.argv[7])) / 100
secs = float(sys.argv[9])
mb = [r[0] for r in res]; gaps = [r[1] for r in res if r[1] is not None]
gbit = sum(mb) * secs / 1e3
print(json.dumps({
    "players": len(mb), "rate": rate, "min": min(mb), "median": statistics.median(mb), "max": max(mb),
    "got_rate": sum(1 for m in mb if m >= 0.95 * rate), "total_mbps": sum(mb),
    "max_gap_s": max(gaps) if gaps else None, "secs": secs,
    "gw_cpu_s": g, "gw_cpu_per_gbit": g / gbit if gbit else None, "gw_cores": g / secs,
    "shims_cpu_s": s, "emu_cpu_s": e, "load": sys.argv[10]}))
EOF
  log "  players: $(cat "$W/players.txt")"
}

# ---------------------------------------------------------------- report

inet_report() {
  python3 - "$W/inet.txt" "$W/ceiling.txt" "$W/players.txt" "$INET_MODES" "$INET_PATHS" <<'EOF2'
import json, statistics, sys
from collections import defaultdict
inet_f, ceil_f, players_f, modes, paths = sys.argv[1:6]
modes, paths = modes.split(), paths.split()
med = lambda xs: statistics.median(xs) if xs else None
def n(v, d=0):
    return "-" if v is None else f"{v:,.{d}f}"
def ratio(a, b):
    return "-" if a is None or not b else f"{a / b:.2f}"
def lines(f):
    try:
        return [l.split() for l in open(f) if l.strip()]
    except FileNotFoundError:
        return []
out = []
names = {"hg": "hushgate connect -> gateway", "hgwg": "wireguard-go (`--wg-config`) -> gateway",
         "cubic": "wireguard-go both ends, kernel CUBIC", "bbr": "wireguard-go both ends, kernel BBR"}
mode_name = {"1R": "one stream, server -> client (the player's direction)", "4R": "four streams, server -> client",
             "1": "one stream, client -> server", "4": "four streams, client -> server"}

ceil = lines(ceil_f)
if ceil:
    out.append("#### The emulator's own ceiling (a perfect wire: no delay, no loss, no rate limit)\n")
    out.append("| traffic | direct (no emulator), Mbit/s | through the emulator, Mbit/s | emulator CPU (cores) | packets/s through it (data direction) | packets per read / per write |")
    out.append("| --- | ---: | ---: | ---: | ---: | ---: |")
    for path, label in (("plain", "plain TCP (kernel, BBR), 1 stream server -> client"), ("hg", "hushgate connect, 1 stream server -> client")):
        d = [float(r[3]) for r in ceil if r[0] == "direct" and r[1] == path]
        e = [r for r in ceil if r[0] == "emu" and r[1] == path]
        if not e: continue
        pps = med([float(r[5]) / float(r[6]) for r in e if float(r[6]) > 0])
        per = med([float(r[5]) / float(r[7]) for r in e if float(r[7]) > 0]); perw = med([float(r[5]) / float(r[8]) for r in e if float(r[8]) > 0])
        out.append(f"| {label} | {n(med(d))} | {n(med([float(r[3]) for r in e]))} | {n(med([float(r[4]) for r in e]), 2)} | {n(pps)} | {n(per, 1)} / {n(perw, 1)} |")
    fl = [r for r in ceil if r[0] == "flood"]
    if fl:
        out.append("")
        out.append("UDP floods of 1400-byte datagrams from the client side for 4 s (the flooder's own limit is the offered rate), client -> server direction:\n")
        out.append("| datagrams per sendmsg | offered, datagrams/s | through the emulator, datagrams/s | Mbit/s (payload) | dropped before it (TUN queue full) | dropped in it (pool) | emulator CPU (cores) |")
        out.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        for gso in ("64", "1"):
            rs = [r for r in fl if r[1] == gso]
            if not rs: continue
            # flood gso rep sent in out pool reads writes tundrops cpu_s
            out.append(f"| {gso} | {n(med([float(r[3]) / 4 for r in rs]))} | {n(med([float(r[5]) / 4 for r in rs]))} | {n(med([float(r[5]) * 1400 * 8 / 4 / 1e6 for r in rs]))} | {n(med([float(r[9]) for r in rs]))} | {n(med([float(r[6]) for r in rs]))} | {n(med([float(r[10]) / 4 for r in rs]), 2)} |")
    out.append("")

rows = lines(inet_f)
# tag mode path rep mbps cong cpu tundrops packets_in lost qdrops pooldrops p50 p90 p99 max
data = defaultdict(list)
for r in rows:
    if len(r) != 16: continue
    data[(r[0], r[1], r[2])].append(r)
def mb(tag, mode, path):
    rs = data.get((tag, mode, path))
    return (med([float(r[4]) for r in rs]), ",".join(f"{float(r[4]):.0f}" for r in rs)) if rs else (None, "-")
tags = []
for r in rows:
    if r[0] not in tags: tags.append(r[0])
grid = [t for t in tags if t.startswith("rtt")]
bns = [t for t in tags if t.startswith("bn-")]
if grid:
    for mode in modes:
        if not any((t, mode, p) in data for t in grid for p in paths): continue
        out.append(f"#### {mode_name[mode].capitalize()}: Mbit/s at the receiver, median of runs\n")
        head = "| round trip | loss (each way) | " + " | ".join(names[p] for p in paths)
        has = "hg" in paths
        if has and "cubic" in paths: head += " | hushgate / CUBIC"
        if has and "bbr" in paths: head += " | hushgate / BBR"
        out.append(head + " | runs (" + "; ".join(paths) + ") |")
        out.append("| --- | --- |" + " ---: |" * (len(paths) + (has and "cubic" in paths) + (has and "bbr" in paths)) + " --- |")
        for t in grid:
            rtt, loss = t[3:].split("-loss")
            vals = {p: mb(t, mode, p) for p in paths}
            if all(v[0] is None for v in vals.values()): continue
            cells = [n(vals[p][0]) for p in paths]
            if has and "cubic" in paths: cells.append(ratio(vals["hg"][0], vals["cubic"][0]))
            if has and "bbr" in paths: cells.append(ratio(vals["hg"][0], vals["bbr"][0]))
            out.append(f"| {'~0' if rtt == '0' else rtt + ' ms'} | {loss} % | " + " | ".join(cells) + " | " + "; ".join(vals[p][1] for p in paths) + " |")
        out.append("")
if bns:
    out.append("#### Bottleneck: Mbit/s and the queueing delay it added (the emulator's queue sojourn in the data direction, ms, p50 / p90 / max, medians of runs)\n")
    out.append("| queue | traffic | " + " | ".join(names[p] for p in paths) + " |")
    out.append("| --- | --- |" + " --- |" * len(paths))
    for t in bns:
        for mode in modes:
            cells = []
            for p in paths:
                rs = data.get((t, mode, p))
                if not rs: cells.append("-"); continue
                f = lambda i: med([float(r[i]) for r in rs if r[i] != "-"])
                cells.append(f"{n(f(4))} Mbit/s; {n(f(12), 1)} / {n(f(13), 1)} / {n(f(15), 1)} ms")
            out.append(f"| {t[3:]} | {mode_name[mode]} | " + " | ".join(cells) + " |")
    out.append("")
if rows:
    cpu = [float(r[6]) for r in rows if len(r) == 16]
    tund = sum(int(r[7]) for r in rows if len(r) == 16)
    pool = sum(int(r[11]) for r in rows if len(r) == 16)
    fails = [f"{r[0]} {r[1]} {r[2]} rep {r[3]}" for r in rows if len(r) == 16 and r[5] == "failed"]
    congs = sorted({f"{r[2]}: {r[5]}" for r in rows if len(r) == 16 and r[5] not in ("failed", "-") and r[1].endswith("R")})
    out.append(f"The emulator itself: its CPU during a run at most {max(cpu):.2f} of a core (median {med(cpu):.2f}); packets the kernel dropped at its TUN devices because it was busy: {tund}; packets it dropped for want of buffers: {pool}. "
               f"Sender's congestion control reported by iperf3 in the server -> client runs: {', '.join(congs) or '-'}. "
               f"iperf3 runs that failed (counted as 0): {len(fails)}{' (' + '; '.join(fails) + ')' if fails else ''}.")
    out.append("")
pl = lines(players_f)
if pl:
    p = json.loads(" ".join(pl[0]))
    out.append("#### Players: each a `hushgate connect` (own tunnel) reading a stream paced at its rate, one gateway\n")
    out.append("| players x rate | got >= 95 % of the rate | per player min / median / max, Mbit/s | longest gap between reads | total | gateway CPU (cores) | gateway CPU s per Gbit | shims' CPU s (all) | emulator CPU s | load average |")
    out.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    gap = "-" if p["max_gap_s"] is None else f"{p['max_gap_s'] * 1000:.0f} ms"
    out.append(f"| {p['players']} x {p['rate']:g} Mbit/s | {p['got_rate']} | {p['min']:.1f} / {p['median']:.1f} / {p['max']:.1f} | {gap} | {p['total_mbps']:,.0f} Mbit/s | {p['gw_cores']:.2f} | {n(p['gw_cpu_per_gbit'], 2)} | {p['shims_cpu_s']:.1f} | {p['emu_cpu_s']:.1f} | {p['load']} |")
    out.append("")
print("\n".join(out))
EOF2
}
