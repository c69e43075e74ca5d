#!/usr/bin/env bash
# The Debian package, as an operator gets it: build it (cargo-deb), install
# it with dpkg on this machine, start the roles from the installed files
# the way the installed units would (their ExecStart lines, as their users,
# with their capabilities and nothing more; systemd itself may not run
# here), do one admission end to end and a download, check the units with
# `systemd-analyze verify`, and purge the package again. Run as root:
#
#   tests/package.sh
#
# Every process runs in a network namespace of its own (hgpkg$$, loopback
# only), so the gateway's nftables table and every port stay in it.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
T0=$(date +%s.%N)
since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }
log() { printf '[%6ss] %s\n' "$(since "$T0")" "$*"; }
die() { echo "tests/package.sh: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "must run as root (dpkg, network namespaces, users)"
for t in dpkg setpriv ip nft curl python3 sha256sum; do
  command -v "$t" >/dev/null || die "'$t' is missing"
done

NS="hgpkg$$"
W="$(mktemp -d /tmp/hushgate-package.XXXXXX)"
PIDS=()
cleanup() {
  set +e
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
  for p in $(ip netns pids "$NS" 2>/dev/null); do kill -9 "$p" 2>/dev/null; done
  ip netns del "$NS" 2>/dev/null
  if dpkg -s hushgate >/dev/null 2>&1; then dpkg --purge hushgate >/dev/null 2>&1; fi
  # What the test put in /etc/hushgate as the operator (dpkg removes its own).
  rm -f /etc/hushgate/ca.pem /etc/hushgate/enroll-token
  rmdir /etc/hushgate 2>/dev/null
  if [ -n "${KEEP_LOGS:-}" ]; then echo "logs kept in $W"; else rm -rf "$W"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_for() { # wait_for WHAT SECONDS CMD...
  local what="$1" secs="$2"; shift 2
  local end=$(( $(date +%s) + secs ))
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$end" ] || { echo "timed out waiting for $what" >&2; return 1; }
    sleep 0.1
  done
}

# ------------------------------------------------------------ build

if ! command -v cargo-deb >/dev/null; then
  t=$(date +%s.%N)
  cargo install --locked cargo-deb --version 3.8.0
  log "cargo install cargo-deb: $(since "$t") s (only when missing)"
fi
t=$(date +%s.%N)
# PACKAGE_PROFILE=release packages what ships (`cargo deb -p hushgate`
# does the same by itself). The test suite packages the debug build it
# has already made (the package is the same but for the binary's
# optimisation), which saves CI a release build of the whole workspace.
PROFILE="${PACKAGE_PROFILE:-dev}"
cargo build --profile "$PROFILE" -p hushgate --locked
log "$PROFILE build: $(since "$t") s"
DIR=$([ "$PROFILE" = dev ] && echo debug || echo "$PROFILE")
BIN="$ROOT/target/$DIR/hushgate"
rm -rf target/package/completions target/package/man target/package/hushgate_*.deb
mkdir -p target/package/completions
"$BIN" completions bash >target/package/completions/hushgate.bash
"$BIN" completions zsh >target/package/completions/_hushgate
"$BIN" completions fish >target/package/completions/hushgate.fish
"$BIN" man target/package/man
t=$(date +%s.%N)
cargo deb -p hushgate --no-build --profile "$PROFILE" --output target/package/ >/dev/null 2>"$W/cargo-deb.log" || { cat "$W/cargo-deb.log" >&2; exit 1; }
DEB=$(ls target/package/hushgate_*.deb)
log "cargo deb: $(since "$t") s, $(du -h "$DEB" | cut -f1) $(basename "$DEB")"

# ------------------------------------------------------------ install

if dpkg -s hushgate >/dev/null 2>&1; then dpkg --purge hushgate >/dev/null; fi
dpkg -i "$DEB" >/dev/null
log "installed with dpkg -i"
for f in /usr/bin/hushgate /lib/systemd/system/hushgate-control.service \
  /lib/systemd/system/hushgate-gateway.service /etc/hushgate/control.toml /etc/hushgate/gateway.toml \
  /usr/share/bash-completion/completions/hushgate /usr/share/zsh/vendor-completions/_hushgate \
  /usr/share/fish/vendor_completions.d/hushgate.fish /usr/share/hushgate/grafana-dashboard.json \
  /usr/share/doc/hushgate/examples/connect.toml; do
  [ -e "$f" ] || die "the package did not install $f"
done
ls /usr/share/man/man1/hushgate-gateway.1* >/dev/null || die "no man page hushgate-gateway(1)"
dpkg-query -W -f='${Conffiles}\n' hushgate | grep -q /etc/hushgate/gateway.toml || die "gateway.toml is not a conffile"
for role in control gateway; do
  getent passwd "hushgate-$role" >/dev/null || die "no system user hushgate-$role"
  [ "$(stat -c '%U %a' /var/lib/hushgate/$role)" = "hushgate-$role 700" ] || die "/var/lib/hushgate/$role is not hushgate-$role's, 0700"
done
log "binary, units, configs (conffiles), completions, man pages, system users and state folders in place"

if command -v systemd-analyze >/dev/null; then
  # Offline: checks the units' syntax, that ExecStart exists, and the
  # [Install] section, without a running systemd; their Documentation=
  # man pages too where `man` is installed.
  man_check=--man=no
  command -v man >/dev/null && man_check=--man=yes
  if ! out=$(systemd-analyze verify "$man_check" /lib/systemd/system/hushgate-control.service \
    /lib/systemd/system/hushgate-gateway.service 2>&1); then
    echo "$out" >&2; die "systemd-analyze verify refused a unit"
  fi
  if grep -i "hushgate" <<<"$out"; then die "systemd-analyze verify warned about a unit"; fi
  log "systemd-analyze verify $man_check: both units clean"
else
  log "systemd-analyze is not installed: units not verified"
fi

# ------------------------------------------------------------ run as the units would

# A value of a unit's [Service] section (the last one wins, as in systemd).
unit_value() { sed -n "s/^$2=//p" "/lib/systemd/system/$1" | tail -1; }

# Runs UNIT's ExecStart in the namespace as its User=, with exactly its
# AmbientCapabilities= (also its bounding set) and no new privileges;
# output in $W/NAME.log; prints the pid.
run_unit() { # run_unit UNIT NAME [ENV=VALUE...]
  local unit="$1" name="$2"; shift 2
  local user caps="" cap exec
  user=$(unit_value "$unit" User)
  for cap in $(unit_value "$unit" AmbientCapabilities); do
    caps+=",+$(tr 'A-Z' 'a-z' <<<"${cap#CAP_}")"
  done
  [ "$(unit_value "$unit" CapabilityBoundingSet | tr 'A-Z' 'a-z' | sed 's/cap_/,+/g; s/ //g')" = "$caps" ] ||
    die "$unit: CapabilityBoundingSet= and AmbientCapabilities= differ"
  [ "$(unit_value "$unit" NoNewPrivileges)" = yes ] || die "$unit: no NoNewPrivileges=yes"
  exec=$(unit_value "$unit" ExecStart)
  # shellcheck disable=SC2086
  ip netns exec "$NS" env "$@" setpriv --reuid="$user" --regid="$user" --init-groups --no-new-privs \
    --inh-caps=-all"$caps" --ambient-caps=-all"$caps" --bounding-set=-all"$caps" -- $exec \
    >"$W/$name.log" 2>&1 &
  echo $!
}

ip netns add "$NS"
ip netns exec "$NS" ip link set lo up

CTL=$(run_unit hushgate-control.service control); PIDS+=("$CTL")
wait_for "the control plane" 20 test -s /var/lib/hushgate/control/control-url || { cat "$W/control.log" >&2; exit 1; }
admin() { ip netns exec "$NS" hushgate admin --state /var/lib/hushgate/control "$@"; }
PASSWORD="package-$$-password"
echo "$PASSWORD" | admin user add alice >/dev/null
TOKEN=$(admin server add home | grep '^hge_')
admin grant add alice home >/dev/null
log "control plane up as hushgate-control (from /etc/hushgate/control.toml); user, server and grant made"

# The operator's steps for the gateway: the control plane's CA, the token
# in a root-only file, the installed gateway.toml with its addresses set.
install -m 0644 /var/lib/hushgate/control/ca.pem /etc/hushgate/ca.pem
(umask 077; echo "$TOKEN" >/etc/hushgate/enroll-token)
# Ports forwarded by hand (no router in the namespace to map them).
sed -i -e 's#https://control.example.net:8443#https://127.0.0.1:8443#' \
  -e 's|^\(# \)\?public_endpoint = "198.51.100.10:51820"|public_endpoint = "127.0.0.1:51820"|' \
  -e 's|^port_mapping = "auto"|port_mapping = "off"|' /etc/hushgate/gateway.toml
grep -q '^public_endpoint = "127.0.0.1:51820"' /etc/hushgate/gateway.toml || die "gateway.toml has no public_endpoint line to set"
# LoadCredential=enroll-token:/etc/hushgate/enroll-token, as systemd does
# it: a private copy only the service's user can read.
CRED="$W/credentials"
mkdir -p "$CRED"
install -m 0400 -o hushgate-gateway /etc/hushgate/enroll-token "$CRED/enroll-token"
chown hushgate-gateway "$CRED"; chmod 0500 "$CRED"
chmod 0711 "$W"

mkdir -p "$W/media"
head -c $((4 << 20)) /dev/urandom >"$W/media/file.bin"
SHA=$(sha256sum "$W/media/file.bin" | cut -d' ' -f1)
ip netns exec "$NS" python3 -m http.server 32400 --bind 127.0.0.1 --directory "$W/media" >"$W/media.log" 2>&1 &
PIDS+=("$!")

GW=$(run_unit hushgate-gateway.service gateway CREDENTIALS_DIRECTORY="$CRED"); PIDS+=("$GW")
wait_for "the gateway in sync" 20 grep -q "in sync" "$W/gateway.log" || { cat "$W/gateway.log" >&2; exit 1; }
# The pid of the hushgate process in the namespace running ROLE.
role_pid() {
  local p
  for p in $(ip netns pids "$NS"); do
    if [ "$(cat /proc/"$p"/comm 2>/dev/null)" = hushgate ] && tr '\0' ' ' </proc/"$p"/cmdline | grep -q " $1 "; then
      echo "$p"; return 0
    fi
  done
  return 1
}
gw_pid=$(role_pid gateway)
[ "$(stat -c %U /proc/"$gw_pid")" = hushgate-gateway ] || die "the gateway does not run as hushgate-gateway"
grep -q '^CapEff:\s*0000000000001000$' /proc/"$gw_pid"/status || die "the gateway's capabilities are not CAP_NET_ADMIN alone: $(grep Cap /proc/"$gw_pid"/status)"
ctl_pid=$(role_pid control)
grep -q '^CapEff:\s*0000000000000000$' /proc/"$ctl_pid"/status || die "the control plane holds capabilities"
ip netns exec "$NS" nft list table inet hushgate_51820 >/dev/null || die "the gateway's pre-filter table is missing"
log "gateway up as hushgate-gateway with CAP_NET_ADMIN only; its pre-filter table is in place"

# The client, as any user (nobody), from the package's binary.
mkdir -p "$W/client"; chown nobody "$W/client"
ip netns exec "$NS" setpriv --reuid=nobody --regid=nogroup --clear-groups --no-new-privs -- \
  env HOME="$W/client" HUSHGATE_PASSWORD="$PASSWORD" hushgate connect home \
  --control https://127.0.0.1:8443 --ca /etc/hushgate/ca.pem --user alice --server home \
  --listen 127.0.0.1:32500 </dev/null >"$W/client.log" 2>&1 &
PIDS+=("$!")
wait_for "the client ready" 20 grep -q "^ready:" "$W/client.log" || { cat "$W/client.log" >&2; exit 1; }
ip netns exec "$NS" curl -sS --max-time 30 -o "$W/got.bin" http://127.0.0.1:32500/file.bin
[ "$(sha256sum "$W/got.bin" | cut -d' ' -f1)" = "$SHA" ] || die "the download through the tunnel differs"
log "admission end to end: 4 MiB through the tunnel, sha256 matches"

for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
PIDS=()
ip netns del "$NS"
rm -f /etc/hushgate/ca.pem /etc/hushgate/enroll-token
dpkg --purge hushgate >/dev/null
! getent passwd hushgate-gateway >/dev/null || die "purge left the user hushgate-gateway"
[ ! -e /usr/bin/hushgate ] && [ ! -e /var/lib/hushgate ] && [ ! -e /lib/systemd/system/hushgate-gateway.service ] ||
  die "purge left files behind"
log "purged: binary, state and users gone"
echo "package: ok"
