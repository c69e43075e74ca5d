# Everyday recipes. `just --list` shows them.

# The whole test suite (what CI runs).
test:
    tests/run-all.sh

# Fast loop: unit and integration tests only.
check:
    cargo test --workspace

# The unit and integration tests while every core is kept busy by another
# process (ROUNDS=3 for three runs in a row): a test that needs an idle
# machine fails here, not on a user's.
check-under-load:
    tests/under-load.sh

# Format and lint.
lint:
    cargo fmt --all
    cargo clippy --workspace --all-targets -- -D warnings

# Fuzz every decoder (or the targets named, e.g. `just fuzz dispatcher`)
# for FUZZ_SECONDS each (default 60; FUZZ_JOBS=2 runs two processes per
# target); installs cargo-fuzz when missing, needs the nightly toolchain.
# See fuzz/README.md.
fuzz *targets:
    fuzz/run.sh {{targets}}

# Control plane throughput and login latency.
bench-control:
    cargo bench -p hushgate-control --bench access

# A control plane on loopback with its state in ./state/control.
control:
    cargo run --release -p hushgate -- control --listen 127.0.0.1:8443 --state state/control

# Side by side, as root: hushgate vs wireguard-go vs plain TCP on the netns
# topology: issue 6 (throughput, tunnel and direct time to access, floods
# with and without the gateway's kernel pre-filter; about 11 minutes) and
# issue 12 (round trips x losses x paths, a bottleneck, 50 players, through
# the user-space Internet emulator; about 2.5 hours); writes its sections
# of docs/benchmarks.md. Knobs (SKIP, INET_*, ...): see bench/run.sh.
bench:
    cargo build --release -p hushgate --bin hushgate --example flood --example access_time -p hushgate-netem
    HUSHGATE_BIN="${CARGO_TARGET_DIR:-target}/release/hushgate" bench/run.sh

# Where the data-path threads spend their time (bench/run.sh PROFILE=1), as
# root, on the `profiling` build: the release one is stripped of symbols.
bench-profile:
    cargo build --profile profiling -p hushgate --bin hushgate --example flood --example access_time
    HUSHGATE_BIN="${CARGO_TARGET_DIR:-target}/profiling/hushgate" PROFILE=1 bench/run.sh

# Chaos (netns scenario 19) with 100 faults, as root; CHAOS_SEED picks the
# sequence (CI runs 12 faults of seed 20). See docs/testing.md.
chaos seed="7" faults="100":
    cargo build -p hushgate -p hushgate-netem
    CHAOS_SEED={{seed}} CHAOS_FAULTS={{faults}} tests/netns/run.sh 19

# The soak, as root: an hour (SOAK_SECS) of churning admissions, roaming and
# an attacker's flood; reports memory slopes, descriptors and set sizes.
soak:
    cargo build -p hushgate -p hushgate-netem
    nice -n 10 bench/soak.sh
