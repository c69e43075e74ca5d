# Scenarios 19 (chaos) and 20 (control plane down for a long time) of the
# netns harness. Sourced by tests/netns/run.sh, not run: they use its
# world (setup_world) and helpers.
#
# Scenario 19: a population of CHAOS_SHIMS `hushgate connect` shims (each
# downloading again and again, renewing 15 s admissions) and CHAOS_WG
# stock WireGuard clients (wireguard-go with `hushgate connect
# --wg-config`, a new admission each lifetime, since a stock client never
# renews) while a driver seeded by CHAOS_SEED injects CHAOS_FAULTS faults
# at random moments: SIGKILL of the control plane or of the gateway (then
# restarted), SIGKILL of a shim (then restarted), revocation of a shim's
# or a stock client's admission, and a move of the client's NAT to another
# public address (roaming); with CONTROL_DB=postgres (the control plane's
# state in the harness's PostgreSQL), half of the control plane faults
# are SIGKILLs of PostgreSQL instead (then started again: crash recovery).
# The checker is the same. The sequence of faults, targets and pauses is
# a function of the seed alone: `CHAOS_SEED=7 CHAOS_FAULTS=100
# tests/netns/run.sh 19` repeats it. After each fault the invariant
# checker (chaos_check) requires:
#   - every client works again (GET /identity through it) within
#     CHAOS_RECOVER s (5) of the fault's end, whatever the fault; a stock
#     client after a gateway restart within WireGuard's own retry time
#     (its handshake is retried after 15 s of silence: CHAOS_WG_RECOVER,
#     20 s), and after a move of its NAT at its next admission (its
#     admission is bound to the old address);
#   - the control plane's store, the gateway's installed peers (`gateway
#     status`) and the kernel's pre-filter sets agree, within
#     CHAOS_CONVERGE s (15): every admission a client holds (acknowledged
#     to it) and not expired is installed at the gateway; every installed
#     peer is live in the store (none revoked, none expired); the kernel
#     sets hold exactly the sources of the installed peers;
#   - a revoked admission passes no packet: a revoked stock client's
#     requests fail at once, a revoked shim ends saying so; an expired one
#     neither: each stock client checks that its old key no longer gets
#     through once its admission has expired;
#   - every download that completed is byte-identical (sha256).
# Violations are collected and the scenario fails at the end, listing
# them with the fault that preceded each.

CHAOS_SEED="${CHAOS_SEED:-20}"
CHAOS_FAULTS="${CHAOS_FAULTS:-12}"
CHAOS_SHIMS="${CHAOS_SHIMS:-12}"
CHAOS_WG="${CHAOS_WG:-3}"
CHAOS_RECOVER="${CHAOS_RECOVER:-5}"
CHAOS_WG_RECOVER="${CHAOS_WG_RECOVER:-20}"
# A shim after a NAT move: it notices the silence after 1 s, its probe
# (a renewal, at most one per 2 s while silent) is told "moved", and it
# is admitted anew. After a gateway restart: the gateway has forgotten its
# session; it sends a fresh handshake initiation every second while silent
# and the first one the restarted gateway gets restores the tunnel. Both
# may be given a looser bound to tell a slow machine from a regression.
CHAOS_ROAM_RECOVER="${CHAOS_ROAM_RECOVER:-$CHAOS_RECOVER}"
CHAOS_GW_RECOVER="${CHAOS_GW_RECOVER:-$CHAOS_RECOVER}"
CHAOS_CONVERGE="${CHAOS_CONVERGE:-15}"
CHAOS_TTL=15
C="" # the scenario's folder, set by scenario_19

ctl_pid() { cat "$W/ctl.pid"; }
# The background clients loop while this holds: the scenario's end (or the
# harness removing its folder) stops them even where a kill missed a
# subshell of theirs.
chaos_running() { [ -d "$C" ] && [ ! -e "$C/stop" ]; }
gw_pid() { cat "$W/gw.pid"; }
violation() { echo "fault $(cat "$C/fault" 2>/dev/null || echo 0): $*" | tee -a "$C/violations" >&2; }

# Kills shim I with SIGKILL and waits until it is gone (its port free).
chaos_kill_shim() { # chaos_kill_shim I
  local pid; pid=$(cat "$C/shim$1.pid")
  kill -9 "$pid" 2>/dev/null || true
  wait_for "shim $1 to die" 10 bash -c "! kill -0 $pid 2>/dev/null"
}
chaos_start_shim() { # chaos_start_shim I
  local i="$1" pid
  pid=$(HUSHGATE_PASSWORD="$PASSWORD" bg cli "$C/shim$i.log" "$BIN" connect --control https://203.0.113.2:8443 \
    --ca "$W/ctl/ca.pem" --user "chaos$((i % 4))" --server home --listen "127.0.0.1:$((32500 + i))" \
    --device-file "$C/device-shim$i")
  echo "$pid" >"$C/shim$i.pid"
}
chaos_shim_ready() { grep -q "^ready:" "$C/shim$1.log"; }
# The admission the shim holds now: the last one it printed.
chaos_shim_adm() { grep -o 'admission adm_[0-9a-f]*' "$C/shim$1.log" | tail -1 | cut -d' ' -f2; }
# ... and the expiry last acknowledged to it (epoch seconds).
chaos_shim_exp() {
  date -d "$(grep -o 'admission adm_[0-9a-f]*,\? expires [^ )]*' "$C/shim$1.log" | tail -1 | sed 's/.*expires //')" +%s
}

# One shim's player: downloads chaos.bin again and again; a download curl
# calls complete must be intact.
chaos_player() { # chaos_player I
  local i="$1" n=0
  while chaos_running; do
    n=$((n + 1))
    if ns cli curl -sf --max-time 30 --limit-rate 1M -o "$C/dl$i.bin" "http://127.0.0.1:$((32500 + i))/chaos.bin" 2>/dev/null; then
      if [ "$(sha256sum "$C/dl$i.bin" | cut -d' ' -f1)" = "$CHAOS_SHA" ]; then
        echo ok >>"$C/downloads"
      else
        violation "shim $i: a completed download's sha256 differs"
        cp "$C/dl$i.bin" "$C/corrupt-$i-$n.bin"
      fi
    else
      echo cut >>"$C/downloads"; sleep 0.5
    fi
  done
}

# A stock WireGuard client: wireguard-go as interface ${P}wI. Several
# share the cli namespace, each with its own route to the service address
# (metric 200+I): requests are bound to the interface (curl --interface
# IFACE, SO_BINDTODEVICE), so each takes its own tunnel even when the
# control plane gives one client a tunnel address another just released.
# Each cycle: a new admission (retried while the control plane is down),
# used until its expiry; once it has expired the old key must not get
# through; then the next one. $C/wgI.cur holds "ADMISSION EXPIRES_EPOCH
# IFACE" while the client counts as live, and is removed while it is
# between admissions.
chaos_wg_client() { # chaos_wg_client I
  local i="$1" ifc="${P}w$1" n=0 out adm exp addr
  WG_PROCESS_FOREGROUND=1 bg cli "$C/wg$i.log" wireguard-go -f "$ifc" >/dev/null
  wait_for "wireguard-go $ifc" 10 ns cli ip link show "$ifc" || return 1
  ns cli ip link set "$ifc" up
  ns cli ip route add 100.64.0.1/32 dev "$ifc" metric $((200 + i))
  while chaos_running; do
    n=$((n + 1))
    local conf="$C/wg$i-$n.conf"
    until out=$(HUSHGATE_PASSWORD="$PASSWORD" ns cli timeout 20 "$BIN" connect --control https://203.0.113.2:8443 \
        --ca "$W/ctl/ca.pem" --user "chaos$((i % 4))" --server home --wg-config "$conf" \
        --device-file "$C/device-wg$i" 2>&1); do
      chaos_running || return 0
      sleep 0.5
    done
    adm=$(sed -n 's/.*admission \(adm_[0-9a-f]*\),.*/\1/p' <<<"$out" | head -1)
    exp=$(date -d "$(sed -n 's/.*expires \([^ ]*\)$/\1/p' <<<"$out" | head -1)" +%s)
    addr=$(sed -n 's/^Address = \([^/]*\).*/\1/p' "$conf")
    grep -v '^Address' "$conf" | grep -v '^#' >"$conf.wg"
    ns cli wg setconf "$ifc" "$conf.wg"
    ns cli ip addr flush dev "$ifc"
    ns cli ip addr add "$addr/32" dev "$ifc"
    echo "$adm $exp $ifc" >"$C/wg$i.cur"
    echo "$adm" >>"$C/acked"
    # Used until a second before its expiry, or until revoked.
    while [ "$(date +%s)" -lt $((exp - 1)) ] && [ ! -e "$C/wg$i.revoked" ]; do
      ns cli curl -sf --max-time 2 --interface "$ifc" -o /dev/null http://100.64.0.1:32400/identity 2>/dev/null || true
      sleep 1
    done
    rm -f "$C/wg$i.cur"
    if [ -e "$C/wg$i.revoked" ]; then rm -f "$C/wg$i.revoked"; continue; fi
    # Expired (the gateway's clock is this one): the same key from the
    # same address must get nothing through any more.
    while [ "$(date +%s)" -le $((exp + 1)) ]; do sleep 0.2; done
    if ns cli curl -sf --max-time 2 --interface "$ifc" -o /dev/null http://100.64.0.1:32400/identity 2>/dev/null; then
      violation "stock client $i: admission $adm still passes packets after its expiry"
    fi
    echo "$adm" >>"$C/expired-checked"
  done
}

# Polls every live client in parallel until each answers GET /identity;
# prints the slowest time, fails (with a violation) past the bounds.
chaos_reach() { # chaos_reach T_END KIND
  local t_end="$1" kind="$2" i pids=() shim_bound="$CHAOS_RECOVER" wg_bound="$CHAOS_RECOVER"
  [ "$kind" = gateway ] && wg_bound="$CHAOS_WG_RECOVER"
  [ "$kind" = roam ] && shim_bound="$CHAOS_ROAM_RECOVER"
  [ "$kind" = gateway ] && shim_bound="$CHAOS_GW_RECOVER"
  rm -f "$C"/reach.*
  for i in $(seq 1 "$CHAOS_SHIMS"); do
    (
      local end; end=$(awk -v a="$t_end" -v b="$shim_bound" 'BEGIN { printf "%d", a + b + 1 }')
      until ns cli curl -sf --max-time 1 -o /dev/null "http://127.0.0.1:$((32500 + i))/identity" 2>/dev/null; do
        if [ "$(date +%s)" -ge "$end" ]; then echo "-1" >"$C/reach.s$i"; exit; fi
        sleep 0.1
      done
      since "$t_end" >"$C/reach.s$i"
    ) & pids+=($!)
  done
  for i in $(seq 1 "$CHAOS_WG"); do
    [ "$kind" = roam ] && continue
    (
      local cur end
      end=$(awk -v a="$t_end" -v b="$wg_bound" 'BEGIN { printf "%d", a + b + 1 }')
      while :; do
        cur=$(cat "$C/wg$i.cur" 2>/dev/null) || { echo skip >"$C/reach.w$i"; exit; }
        ns cli curl -sf --max-time 1 --interface "${cur##* }" -o /dev/null http://100.64.0.1:32400/identity 2>/dev/null && break
        if [ "$(date +%s)" -ge "$end" ]; then
          # A client whose admission ended meanwhile is between admissions.
          [ -e "$C/wg$i.cur" ] && echo "-1" >"$C/reach.w$i" || echo skip >"$C/reach.w$i"
          exit
        fi
        sleep 0.1
      done
      since "$t_end" >"$C/reach.w$i"
    ) & pids+=($!)
  done
  wait "${pids[@]}" 2>/dev/null || true
  local worst=0 f v
  for f in "$C"/reach.*; do
    [ -e "$f" ] || continue
    v=$(cat "$f")
    case "$v" in
      skip) ;;
      -1)
        local who="${f##*reach.}"
        echo "$kind $who -1" >>"$C/recovery"
        case "$who" in
          s*) violation "shim ${who#s} not working again within $shim_bound s of the end of the fault ($kind)" ;;
          w*) violation "stock client ${who#w} not working again within $wg_bound s of the end of the fault ($kind)" ;;
        esac ;;
      *)
        # The polls above give up a second late (whole seconds); the bound
        # itself is exact.
        local who="${f##*reach.}" bound="$shim_bound" name
        name="shim ${who#s}"
        case "$who" in w*) bound="$wg_bound"; name="stock client ${who#w}" ;; esac
        echo "$kind $who $v" >>"$C/recovery"
        if awk -v v="$v" -v b="$bound" 'BEGIN { exit !(v > b) }'; then
          violation "$name back only $v s after the end of the fault ($kind), over $bound s"
        fi
        worst=$(awk -v a="$worst" -v b="$v" 'BEGIN { print (b > a) ? b : a }') ;;
    esac
  done
  echo "$worst"
}

# The distribution of the times clients took to work again (one line per
# client and fault in $C/recovery: KIND WHO SECONDS, -1 for never), by the
# kind of fault, for shims and stock clients apart, logged at the end.
chaos_recovery_summary() {
  [ -s "$C/recovery" ] || return 0
  python3 - "$C/recovery" <<'EOF' | while IFS= read -r l; do log "  $l"; done
import collections, sys
groups = collections.defaultdict(list)
for kind, who, v in (l.split() for l in open(sys.argv[1]) if l.strip()):
    if kind == "none":
        continue
    client = "shims" if who.startswith("s") else "stock clients"
    groups[(client, kind)].append(float(v))
    groups[(client, "all")].append(float(v))
def pct(xs, p):
    return sorted(xs)[min(len(xs) - 1, int(p * len(xs)))]
print("back to work, seconds after the fault's end:")
for (client, kind), xs in sorted(groups.items()):
    ok = [x for x in xs if x >= 0]
    never = len(xs) - len(ok)
    line = f"{client}, {kind}: n={len(xs)}"
    if ok:
        line += f" median={pct(ok, .5):.2f} p90={pct(ok, .9):.2f} p99={pct(ok, .99):.2f} max={max(ok):.2f} over-5s={sum(x > 5 for x in ok)}"
    print(line + f" never={never}")
EOF
}

# The three views agree: prints nothing and succeeds, or prints what is
# wrong and fails. Admissions acknowledged to clients: each live shim's
# current one, each stock client's current one.
chaos_views() {
  local gw store kernel held="" gw_t
  local i pid adm
  for i in $(seq 1 "$CHAOS_SHIMS"); do
    pid=$(cat "$C/shim$i.pid"); kill -0 "$pid" 2>/dev/null || continue
    adm=$(chaos_shim_adm "$i"); [ -n "$adm" ] && held="$held shim$i=$adm=$(chaos_shim_exp "$i")"
  done
  local cur
  for i in $(seq 1 "$CHAOS_WG"); do
    cur=$(cat "$C/wg$i.cur" 2>/dev/null) && held="$held wg$i=$(cut -d' ' -f1 <<<"$cur")=$(cut -d' ' -f2 <<<"$cur")"
  done
  # In this order: what the clients were told before the gateway is read,
  # the gateway before the store (an admission is in the store before it
  # reaches the gateway, and leaves the store first).
  gw_t=$(date +%s.%N)
  gw=$(ns edge "$BIN" gateway status --state "$W/gw" --json 2>/dev/null) || { echo "the gateway's status did not answer"; return 1; }
  store=$(admin admission list --json 2>/dev/null) || { echo "the control plane did not answer"; return 1; }
  kernel=$(ns edge nft -j list table inet hushgate_51820 2>/dev/null) || { echo "no pre-filter table"; return 1; }
  python3 - "$gw" "$store" "$kernel" "$held" "$(cat "$C/revoked" 2>/dev/null)" "$gw_t" <<'EOF'
import datetime, ipaddress, json, sys
gw, store, kernel = (json.loads(a) for a in sys.argv[1:4])
# who -> (admission, expiry acknowledged to the client, epoch seconds)
held = {h.split("=")[0]: (h.split("=")[1], int(h.split("=")[2])) for h in sys.argv[4].split()}
revoked = set(sys.argv[5].split())
now = datetime.datetime.now(datetime.timezone.utc)
exp = lambda a: datetime.datetime.fromisoformat(a["expires_at"].replace("Z", "+00:00"))
live = {a["id"]: a for a in store if exp(a) > now}
peers = {p["admission_id"]: p for p in gw["gateway"]["peers"]}
bad = []
for who, (adm, acked) in held.items():
    a = live.get(adm)
    # Revoked, or past (or within a second of) the expiry last
    # acknowledged to the client: not required there. A renewal the
    # gateway has not confirmed yet may extend it in the store only.
    if a is None or acked - now.timestamp() < 1:
        continue
    if adm not in peers:
        bad.append(f"{who} holds {adm} (live in the store, {a['state']}) but the gateway has no such peer")
# The gateway's status was read first (at gw_t): its deadlines are
# absolute times from then, compared with the store's expiry (the
# admin CLI may take seconds on a loaded machine).
gw_t = float(sys.argv[6])
rows = {a["id"]: a for a in store}
for adm, p in peers.items():
    deadline = gw_t + p["expires_in_secs"]
    if adm in revoked:
        bad.append(f"revoked admission {adm} is still installed at the gateway")
    elif adm not in rows and p["expires_in_secs"] > 1:
        # (One in its last second may have been swept from the store
        # already: the gateway's deadline is the store's expiry plus the
        # feed's transit.)
        bad.append(f"the gateway holds {adm} (expires in {p['expires_in_secs']} s) which the store does not hold")
    elif adm in rows and deadline > exp(rows[adm]).timestamp() + 2:
        bad.append(f"the gateway holds {adm} until {deadline:.1f}, {deadline - exp(rows[adm]).timestamp():.1f} s past its expiry in the store")
# Kernel sets: the exact sources of the installed peers, nothing else.
elems = set()
for o in kernel["nftables"]:
    s = o.get("set")
    # The tunnel's sets (t4_32, t6_64, ...); d* are direct mode's.
    if not s or not s["name"].startswith("t"):
        continue
    for e in s.get("elem", []):
        v = e.get("elem", {}).get("val", e) if isinstance(e, dict) else e
        if isinstance(v, dict) and "prefix" in v:
            v = f'{v["prefix"]["addr"]}/{v["prefix"]["len"]}'
        elems.add(str(v))
sources = {p["source"] for p in peers.values()}
nets = [ipaddress.ip_network(e, strict=False) for e in elems]
for s in sources:
    if not any(ipaddress.ip_address(s) in n for n in nets):
        bad.append(f"source {s} of an installed peer is not in the kernel's sets {sorted(elems)}")
for e, n in zip(sorted(elems), [ipaddress.ip_network(e, strict=False) for e in sorted(elems)]):
    if not any(ipaddress.ip_address(s) in n for s in sources):
        bad.append(f"kernel set element {e} matches no installed peer's source {sorted(sources)}")
print("\n".join(bad))
sys.exit(1 if bad else 0)
EOF
}

# Waits until the views agree; prints the seconds it took, or records the
# disagreement as a violation.
chaos_converge() { # chaos_converge T_END
  local end=$(( $(date +%s) + CHAOS_CONVERGE )) why
  while ! why=$(chaos_views); do
    echo "$why" >"$C/why"
    if [ "$(date +%s)" -ge "$end" ]; then
      violation "the store, the gateway and the kernel disagree $CHAOS_CONVERGE s after the checks began: $(echo "$why" | head -5 | tr '\n' ';')"
      echo "-1"; return
    fi
    sleep 0.5
  done
  since "$1"
}

chaos_restart_control() {
  kill -9 "$(ctl_pid)" 2>/dev/null || true
  wait_for "the control plane to die" 5 bash -c "! kill -0 $(ctl_pid) 2>/dev/null"
}
# SIGKILL of the postmaster: its backends end at once (they watch it), the
# next start does crash recovery. Waits until every process is gone.
chaos_kill_postgres() {
  local pid all; pid=$(head -1 "$W-pg/data/postmaster.pid" 2>/dev/null) || return 0
  all="$pid $(pgrep -P "$pid" | tr '\n' ' ')"
  kill -9 "$pid" 2>/dev/null || true
  wait_for "PostgreSQL to die" 10 bash -c "for p in $all; do kill -0 \$p 2>/dev/null && exit 1; done; exit 0"
}
chaos_restart_gateway() {
  local gw; gw=$(gw_pid)
  kill -9 "$gw" 2>/dev/null || true
  wait_for "the gateway to die" 5 bash -c "! kill -0 $gw 2>/dev/null"
}

scenario_19() { # chaos: seeded SIGKILLs of the control plane, the gateway and shims, revocations and roaming under a population of clients; invariants after each fault
  C="$W/chaos"; mkdir -p "$C"
  head -c $((4 << 20)) /dev/urandom >"$W/media/chaos.bin"
  CHAOS_SHA=$(sha256sum "$W/media/chaos.bin" | cut -d' ' -f1)
  local k i
  for k in 36 37; do ns cnat ip addr add "203.0.113.$k/28" dev wan 2>/dev/null || true; done
  for k in 0 1 2 3; do
    echo "$PASSWORD" | admin user add "chaos$k" >/dev/null
    admin grant add "chaos$k" home >/dev/null
  done
  # Room for the admissions a restarted or roaming client leaves behind
  # until they expire (they stay live in the store, rightly).
  admin server set home --ttl "$CHAOS_TTL" --max-admissions-per-user 64 >/dev/null
  local -a helpers=()
  trap 'set +e; touch "$C/stop"; kill ${helpers[*]} 2>/dev/null; for j in $(seq 1 '"$CHAOS_WG"'); do ip netns exec '"$P"'-cli ip link del '"$P"'w$j 2>/dev/null; done; admin server set home --max-admissions-per-user 8 >/dev/null 2>&1; true' EXIT
  for i in $(seq 1 "$CHAOS_SHIMS"); do chaos_start_shim "$i"; done
  for i in $(seq 1 "$CHAOS_SHIMS"); do
    wait_for "chaos shim $i ready" 30 chaos_shim_ready "$i" || { cat "$C/shim$i.log" >&2; return 1; }
    chaos_player "$i" & helpers+=($!)
  done
  for i in $(seq 1 "$CHAOS_WG"); do chaos_wg_client "$i" & helpers+=($!); done
  for i in $(seq 1 "$CHAOS_WG"); do wait_for "stock client $i admitted" 30 test -e "$C/wg$i.cur"; done
  log "  population: $CHAOS_SHIMS shims, $CHAOS_WG stock WireGuard clients; seed $CHAOS_SEED, $CHAOS_FAULTS faults"
  echo 0 >"$C/fault"
  local t0; t0=$(since "$T0")
  # Initial sanity: the invariants hold before any fault.
  chaos_reach "$(date +%s.%N)" none >/dev/null
  chaos_converge "$(date +%s.%N)" >/dev/null
  # bash's generator, seeded: the same seed gives the same faults, targets
  # and pauses, whatever the timing of the processes.
  RANDOM=$CHAOS_SEED
  local nat=34 f kind target pause down t_end rec conv what
  for f in $(seq 1 "$CHAOS_FAULTS"); do
    echo "$f" >"$C/fault"
    pause=$((RANDOM % 30)); down=$((RANDOM % 30)); target=$((RANDOM))
    k=$((RANDOM % 100))
    if [ "$k" -lt 11 ] && [ "$CONTROL_DB" = postgres ]; then kind=pg
    elif [ "$k" -lt 22 ]; then kind=control
    elif [ "$k" -lt 44 ]; then kind=gateway
    elif [ "$k" -lt 62 ]; then kind=shim
    elif [ "$k" -lt 74 ]; then kind=revoke-shim
    elif [ "$k" -lt 86 ]; then kind=revoke-wg
    else kind=roam
    fi
    # A random moment: downloads, renewals and stock clients' cycles run on.
    sleep "$((pause / 10)).$((pause % 10))"
    case "$kind" in
      control)
        what="control plane SIGKILLed, down $((down / 10)).$((down % 10)) s"
        chaos_restart_control
        mv "$W/control.log" "$W/control.log.$f"
        sleep "$((down / 10)).$((down % 10))"
        start_control
        # The outage ends when the gateway follows the control plane
        # again (it retries with a backoff of up to 10 s): a client whose
        # admission expired meanwhile (15 s lifetimes) can be admitted
        # anew only from then on.
        local tc; tc=$(date +%s.%N)
        wait_for "the gateway to follow the restarted control plane" 30 \
          bash -c "ip netns exec $P-edge $BIN gateway status --state $W/gw | grep -q '(connected)'" ||
          violation "the gateway did not reconnect to the restarted control plane within 30 s"
        what="$what, the gateway back on its feed $(since "$tc") s after the restart"
        ;;
      pg)
        what="PostgreSQL SIGKILLed, down $((down / 10)).$((down % 10)) s"
        chaos_kill_postgres
        sleep "$((down / 10)).$((down % 10))"
        start_postgres ctl
        # As after a control plane restart: over once the control plane
        # serves from its database again and the gateway follows it.
        local tp; tp=$(date +%s.%N)
        wait_for "the control plane to use its database again" 30 \
          bash -c "ip netns exec $P-ctl $BIN admin --state $W/ctl admission list --json >/dev/null 2>&1" ||
          violation "the control plane did not serve from PostgreSQL within 30 s of its restart"
        wait_for "the gateway to follow the control plane" 30 \
          bash -c "ip netns exec $P-edge $BIN gateway status --state $W/gw | grep -q '(connected)'" ||
          violation "the gateway did not follow the control plane within 30 s of PostgreSQL's restart"
        what="$what, served again and followed $(since "$tp") s after the restart"
        ;;
      gateway)
        what="gateway SIGKILLed, down $((down / 10)).$((down % 10)) s"
        chaos_restart_gateway
        sleep "$((down / 10)).$((down % 10))"
        start_gw4 "chaos-gw$f" >/dev/null
        wait_gateway_synced "chaos-gw$f" || { violation "the restarted gateway did not sync"; }
        ;;
      shim)
        i=$((target % CHAOS_SHIMS + 1))
        what="shim $i SIGKILLed and started again"
        chaos_kill_shim "$i"
        mv "$C/shim$i.log" "$C/shim$i.log.$f"
        chaos_start_shim "$i"
        wait_for "shim $i ready again" 20 chaos_shim_ready "$i" || violation "shim $i did not start again: $(tail -1 "$C/shim$i.log")"
        ;;
      revoke-shim)
        i=$((target % CHAOS_SHIMS + 1))
        local adm; adm=$(chaos_shim_adm "$i")
        what="shim $i's admission $adm revoked"
        echo "$adm" >>"$C/revoked"
        admin admission revoke "$adm" >/dev/null 2>&1 || violation "revoking $adm failed"
        local sp; sp=$(cat "$C/shim$i.pid")
        wait_for "shim $i to end after its revocation" 10 bash -c "! kill -0 $sp 2>/dev/null" ||
          { violation "shim $i still runs 10 s after its admission was revoked"; chaos_kill_shim "$i"; }
        grep -q "revoked" "$C/shim$i.log" || violation "shim $i ended without saying it was revoked: $(tail -1 "$C/shim$i.log")"
        mv "$C/shim$i.log" "$C/shim$i.log.$f"
        chaos_start_shim "$i"
        wait_for "shim $i ready again" 20 chaos_shim_ready "$i" || violation "shim $i did not start again: $(tail -1 "$C/shim$i.log")"
        ;;
      revoke-wg)
        i=$((target % CHAOS_WG + 1))
        local cur; cur=$(cat "$C/wg$i.cur" 2>/dev/null || true)
        if [ -z "$cur" ]; then
          what="stock client $i between admissions: nothing to revoke"
        else
          what="stock client $i's admission ${cur%% *} revoked"
          echo "${cur%% *}" >>"$C/revoked"
          admin admission revoke "${cur%% *}" >/dev/null 2>&1 || true
          # The revocation returns once the gateway has dropped the peer.
          if ns cli curl -sf --max-time 1 --interface "${cur##* }" -o /dev/null http://100.64.0.1:32400/identity 2>/dev/null; then
            violation "stock client $i still gets through after its admission ${cur%% *} was revoked"
          fi
          touch "$C/wg$i.revoked"
          wait_for "stock client $i re-admitted" 20 bash -c "[ ! -e $C/wg$i.revoked ] && [ -e $C/wg$i.cur ]" || true
        fi
        ;;
      roam)
        nat=$(( nat == 37 ? 34 : nat + 1 ))
        what="the client's NAT moved to 203.0.113.$nat"
        ns cnat nft flush chain ip cnat post
        ns cnat nft add rule ip cnat post oifname "wan" ip saddr 198.51.100.0/24 snat to "203.0.113.$nat"
        ns cnat conntrack -F >/dev/null 2>&1 || true
        ;;
    esac
    t_end=$(date +%s.%N)
    rec=$(chaos_reach "$t_end" "${kind%%-*}")
    conv=$(chaos_converge "$t_end")
    log "  fault $f/$CHAOS_FAULTS: $what; clients back in ${rec} s, views agree after ${conv} s"
    [ -s "$C/why" ] && log "    (until then: $(head -2 "$C/why" | tr '\n' ';' | cut -c1-300))"
    rm -f "$C/why"
  done
  local ok cut; ok=$(grep -c ok "$C/downloads" || true); cut=$(grep -c cut "$C/downloads" || true)
  log "  $CHAOS_FAULTS faults in $(awk -v a="$(since "$T0")" -v b="$t0" 'BEGIN { printf "%.0f", a - b }') s: $ok downloads complete and intact, $cut cut by faults; $(wc -l <"$C/expired-checked" 2>/dev/null || echo 0) expired stock-client admissions checked dark"
  chaos_recovery_summary
  if [ -s "$C/violations" ]; then
    echo "chaos (seed $CHAOS_SEED): $(wc -l <"$C/violations") violations:" >&2
    cat "$C/violations" >&2
    return 1
  fi
  [ "${ok:-0}" -gt 0 ]
}

# Scenario 20: the control plane stopped for CONTROL_DOWN_SECS (default
# 60 in the harness; the full 10 minutes: CONTROL_DOWN_SECS=600
# tests/netns/run.sh 20). A shim whose admission outlives the outage
# downloads the 24 MiB file slowly, over the whole outage; a stock
# WireGuard client holds an admission that ends halfway through it.
# While it is down: the download keeps flowing (checked every
# CONTROL_DOWN_STEP s), new connections through the shim work, the stock
# client stops at its admission's expiry (the gateway expires it on its
# own), a new access request fails, and the attacker's probes get zero
# packets back. Once it is back, with no manual step: the gateway
# reconnects, the store, the gateway and the kernel sets agree, the shim
# renews, the download completes intact and a new client gets in.
CONTROL_DOWN_SECS="${CONTROL_DOWN_SECS:-60}"

# A player in the client's namespace that reads /file.bin from HOST:PORT
# at a steady RATE bytes/s (a small receive buffer, a read every 0.1 s;
# curl --limit-rate reads in bursts and then sleeps for a minute), writing
# the body to FILE as it comes. Exits 0 when the whole body arrived.
paced_download() { # paced_download HOST PORT RATE FILE
  ns cli python3 - "$@" <<'PY'
import socket, sys, time
host, port, rate, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
s.connect((host, port))
s.sendall(b"GET /file.bin HTTP/1.0\r\nHost: media\r\n\r\n")
s.settimeout(60)
head = b""
while b"\r\n\r\n" not in head:
    b = s.recv(4096)
    if not b:
        sys.exit("no answer")
    head += b
head, body = head.split(b"\r\n\r\n", 1)
length = int([l.split(b":")[1] for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")][0])
step = max(1, rate // 10)
with open(out, "wb") as f:
    f.write(body); f.flush()
    got = len(body)
    while got < length:
        t = time.monotonic()
        b = s.recv(min(step, length - got))
        if not b:
            sys.exit(f"ended after {got} of {length} bytes")
        f.write(b); f.flush()
        got += len(b)
        time.sleep(max(0.0, len(b) / rate - (time.monotonic() - t)))
PY
}
CONTROL_DOWN_STEP="${CONTROL_DOWN_STEP:-10}"

scenario_20() { # control plane stopped for CONTROL_DOWN_SECS: streams flow to the end of their admissions, the port stays dark, state converges on its return
  C="$W/down"; mkdir -p "$C"; : >"$C/violations"; echo 0 >"$C/fault"
  local down="$CONTROL_DOWN_SECS" wg_ttl=$(( CONTROL_DOWN_SECS / 2 ))
  trap 'set +e; admin server set home --ttl 15 >/dev/null 2>&1; ip netns exec '"$P"'-cli ip link del '"$P"'w20 2>/dev/null; true' EXIT
  # The stock client's admission ends halfway through the outage.
  admin server set home --ttl "$wg_ttl" >/dev/null
  HUSHGATE_PASSWORD="$PASSWORD" ns cli "$BIN" connect --control https://203.0.113.2:8443 \
    --ca "$W/ctl/ca.pem" --user bob --server home --wg-config "$C/wg.conf" >"$C/wg.out"
  local wg_adm; wg_adm=$(sed -n 's/.*admission \(adm_[0-9a-f]*\),.*/\1/p' "$C/wg.out")
  local wg_exp; wg_exp=$(date -d "$(sed -n 's/.*expires \([^ ]*\)$/\1/p' "$C/wg.out")" +%s)
  start_wg cli "${P}w20" "$C/wg.conf"
  wait_for "the stock client through the gateway" 10 ns cli curl -sf --max-time 2 http://100.64.0.1:32400/identity
  # The shim's admission outlives the outage by a minute.
  admin server set home --ttl $(( down + 60 )) >/dev/null
  local pid; pid=$(start_shim 32420 shim20)
  admin server set home --ttl 15 >/dev/null
  # Slow enough to last beyond the outage.
  local rate=$(( (FILE_MIB << 20) / (down + 90) ))
  paced_download 127.0.0.1 32420 "$rate" "$C/s20.bin" 2>"$C/curl.err" &
  local dl=$!
  sleep 2
  local ctl; ctl=$(ctl_pid)
  kill -TERM "$ctl"
  wait_for "the control plane to stop" 10 bash -c "! kill -0 $ctl 2>/dev/null"
  local t0; t0=$(date +%s)
  log "  control plane stopped for $down s; the shim's download runs at $((rate >> 10)) KiB/s, the stock client's admission ends in $(( wg_exp - t0 )) s"
  local last=0 size seen wg_dark="" checks=0
  while [ $(( $(date +%s) - t0 )) -lt "$down" ]; do
    sleep "$CONTROL_DOWN_STEP"
    checks=$((checks + 1))
    size=$(stat -c %s "$C/s20.bin" 2>/dev/null || echo 0)
    if [ "$size" -le "$last" ] && kill -0 "$dl" 2>/dev/null; then
      violation "the download did not move for $CONTROL_DOWN_STEP s ($size bytes) at $(( $(date +%s) - t0 )) s into the outage"
    fi
    last=$size
    ns cli curl -sf --max-time 5 -o /dev/null http://127.0.0.1:32420/identity ||
      violation "a new connection through the shim failed $(( $(date +%s) - t0 )) s into the outage"
    if [ "$(date +%s)" -le $(( wg_exp - 2 )) ]; then
      ns cli curl -sf --max-time 3 -o /dev/null http://100.64.0.1:32400/identity ||
        violation "the stock client failed before its admission's end, $(( $(date +%s) - t0 )) s into the outage"
    elif [ "$(date +%s)" -ge $(( wg_exp + 1 )) ] && [ -z "$wg_dark" ]; then
      if ns cli curl -sf --max-time 3 -o /dev/null http://100.64.0.1:32400/identity; then
        violation "the stock client still gets through after its admission ended (the gateway must expire it alone)"
      fi
      wg_dark=1
    fi
  done
  [ -n "$wg_dark" ] || violation "the outage ended before the stock client's admission did: nothing checked"
  kill -0 "$dl" 2>/dev/null || violation "the download ended during the outage ($last bytes): it did not span it"
  local out rc=0
  out=$(HUSHGATE_PASSWORD="$PASSWORD" ns cli timeout 30 "$BIN" connect --control https://203.0.113.2:8443 \
    --ca "$W/ctl/ca.pem" --user alice --server home --listen 127.0.0.1:32421 2>&1) || rc=$?
  [ "$rc" != 0 ] && grep -q "cannot reach the control plane" <<<"$out" ||
    violation "a new access request during the outage did not fail as unreachable: $(tail -1 <<<"$out")"
  start_capture
  junk 300
  ns atk nmap -n -Pn -sU -p 51820 --max-retries 2 203.0.113.18 >"$C/nmap.log" 2>&1
  seen=$(stop_capture)
  [ "$seen" = 0 ] || violation "the attacker got $seen packets back during the outage"
  log "  $(( $(date +%s) - t0 )) s down: $checks checks, the download at $((last >> 20)) MiB and moving, new connections through the shim work, the stock client went dark at its expiry, the attacker got $seen packets back"
  start_control
  local t1; t1=$(date +%s.%N)
  wait_for "the gateway to reconnect" 30 \
    bash -c "ip netns exec $P-edge $BIN gateway status --state $W/gw | grep -q '(connected)'" ||
    violation "the gateway did not reconnect within 30 s"
  local rec; rec=$(since "$t1")
  # Converged: the gateway holds exactly the store's live admissions of
  # this server, the kernel exactly their sources; the stock client's is
  # gone from both.
  local conv_end=$(( $(date +%s) + 20 )) why=""
  until why=$(down_views "$wg_adm"); do
    [ "$(date +%s)" -ge "$conv_end" ] && { violation "not converged 20 s after the restart: $why"; break; }
    sleep 0.5
  done
  wait_for "the shim to renew with the control plane back" $(( down + 60 )) \
    bash -c "grep -q '^renewed' $C/../shim20.log" || violation "the shim never renewed after the outage"
  wait "$dl" || violation "the download failed: $(cat "$C/curl.err")"
  check_sha "$C/s20.bin" || violation "the download's sha256 differs"
  local pid2; pid2=$(start_shim 32422 shim20b) && ns cli curl -sf --max-time 5 -o /dev/null http://127.0.0.1:32422/identity ||
    violation "a new client could not get in after the outage"
  log "  back: the gateway reconnected in $rec s, views agree, the shim renewed, the 24 MiB download is intact, a new client gets in"
  kill "$pid" "$pid2" 2>/dev/null; wait "$pid" "$pid2" 2>/dev/null || true
  stop_wg cli "${P}w20"
  if [ -s "$C/violations" ]; then cat "$C/violations" >&2; return 1; fi
}

# Scenario 20's agreement: every peer of the IPv4 gateway is live in the
# store, every live admission of server home is a peer (except one ending
# within the second), the kernel's sets hold exactly the peers' sources,
# and admission $1 (expired) is in none of them.
down_views() { # down_views EXPIRED_ADMISSION
  local gw store kernel
  gw=$(ns edge "$BIN" gateway status --state "$W/gw" --json 2>/dev/null) || { echo "no gateway status"; return 1; }
  store=$(admin admission list --json 2>/dev/null) || { echo "no store"; return 1; }
  kernel=$(ns edge nft -j list table inet hushgate_51820 2>/dev/null) || { echo "no table"; return 1; }
  python3 - "$gw" "$store" "$kernel" "$1" <<'PY'
import datetime, json, sys
gw, store, kernel = (json.loads(a) for a in sys.argv[1:4])
gone = sys.argv[4]
now = datetime.datetime.now(datetime.timezone.utc)
exp = lambda a: datetime.datetime.fromisoformat(a["expires_at"].replace("Z", "+00:00"))
live = {a["id"] for a in store if a["server"] == "home" and a["mode"] == "tunnel" and (exp(a) - now).total_seconds() > 1}
peers = {p["admission_id"] for p in gw["gateway"]["peers"]}
bad = []
if live - peers: bad.append(f"live in the store, not at the gateway: {sorted(live - peers)}")
if peers - {a["id"] for a in store}: bad.append(f"at the gateway, not in the store: {sorted(peers - {a['id'] for a in store})}")
if gone in peers: bad.append(f"the expired {gone} is still a peer")
srcs = {p["source"] for p in gw["gateway"]["peers"]}
elems = set()
for o in kernel["nftables"]:
    s = o.get("set")
    if s and s["name"].startswith("t"):
        for e in s.get("elem", []):
            v = e.get("elem", {}).get("val", e) if isinstance(e, dict) else e
            elems.add(str(v))
if elems != srcs: bad.append(f"kernel tunnel sets {sorted(elems)} != peer sources {sorted(srcs)}")
print("; ".join(bad)); sys.exit(1 if bad else 0)
PY
}
