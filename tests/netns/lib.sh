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

# The Internet emulator (tools/netem, `hushgate-netem`) as a router hop in
# namespace $P-NS: policy rules send what arrives on CLIENT_IF for HOME_NET
# into TUN device emu-up, and what arrives on HOME_IF for CLIENT_NET into
# emu-down; the emulator writes packets back into the same device and the
# kernel routes them on by the main table (the rules match the veth they
# came in on, never the TUN). Addresses are never rewritten. Without a
# running emulator the tables are empty and traffic takes the direct path.
# NETEM_BIN is the binary.
emu_rules() { # emu_rules NS CLIENT_IF CLIENT_NET HOME_IF HOME_NET
  local n="$1" cif="$2" cnet="$3" hif="$4" hnet="$5"
  ns "$n" ip rule add iif "$cif" to "$hnet" lookup 100 pref 100
  ns "$n" ip rule add iif "$hif" to "$cnet" lookup 101 pref 101
  # Packets come back from the TUN devices with the other side's source
  # address; the reverse-path filter would drop them.
  ns "$n" sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0
}
# emu_start NS NAME [hushgate-netem args...]: starts the emulator (log in
# $W/NAME.log, statistics in $W/NAME.json), waits until its devices are up,
# routes them; sets EMU_PID.
emu_start() {
  local n="$1" name="$2"; shift 2
  rm -f "$W/$name.json"
  EMU_PID=$(bg "$n" "$W/$name.log" "$NETEM_BIN" --stats "$W/$name.json" "$@")
  wait_for "the emulator $name" 10 grep -q "^ready:" "$W/$name.log" || { cat "$W/$name.log" >&2; return 1; }
  ns "$n" sysctl -qw net.ipv4.conf.emu-up.rp_filter=0 net.ipv4.conf.emu-down.rp_filter=0
  ns "$n" ip route add default dev emu-up table 100
  ns "$n" ip route add default dev emu-down table 101
}
# emu_stop: stops the emulator started last; its statistics file is final.
emu_stop() {
  [ -n "${EMU_PID:-}" ] || return 0
  kill -TERM "$EMU_PID" 2>/dev/null || true
  wait_for "the emulator to stop" 10 bash -c "! kill -0 $EMU_PID 2>/dev/null"
  EMU_PID=""
}
