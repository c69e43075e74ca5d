//! The kernel pre-filter: an nftables table of the gateway's own that
//! drops every datagram to its UDP port (and every packet to its direct
//! services' TCP ports) from sources that hold no live admission, before
//! the gateway process hears of it.
//!
//! The table is `inet hushgate_PORT` (PORT: the gateway's UDP port). It is
//! created when the gateway starts (replacing any older one atomically),
//! kept current on every feed version before the version is acknowledged,
//! and left in place when the gateway stops or crashes: the port stays
//! dark until an operator runs `hushgate gateway filter remove`. Each set
//! element carries its admission's expiry as a kernel timeout, so the
//! kernel forgets expired sources even while the gateway is down.
//!
//! [`plan`] decides what to change (no kernel needed, unit-tested); [`nft`]
//! talks to the kernel.

pub mod nft;
pub mod plan;

use crate::feed::FeedChangeRef;
use plan::{Context, Desired, Element, Pins, PlanError, Reconciler, SetId};
use serde::Serialize;
use std::collections::HashMap;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::{Duration, Instant};

pub use nft::NftError;

/// Whether the gateway uses the kernel pre-filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PrefilterMode {
    /// Use it if the gateway may change nftables; otherwise say so and run
    /// with the user-space filter alone.
    #[default]
    Auto,
    /// Refuse to start without it.
    Required,
    /// Do not touch nftables (tests, or a firewall managed elsewhere).
    Off,
}

impl FromStr for PrefilterMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(PrefilterMode::Auto),
            "required" => Ok(PrefilterMode::Required),
            "off" => Ok(PrefilterMode::Off),
            other => Err(format!(
                "'{other}' is not a pre-filter mode: use auto, required or off"
            )),
        }
    }
}

fn sorted_ports(direct_ports: &HashMap<String, u16>) -> Vec<u16> {
    let mut ports: Vec<u16> = direct_ports.values().copied().collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// The table's name for a gateway on `udp_port`.
pub fn table_name(udp_port: u16) -> String {
    format!("hushgate_{udp_port}")
}

/// What the pre-filter holds, for `hushgate gateway status`.
#[derive(Debug, Clone, Serialize)]
pub struct FilterStatus {
    pub table: String,
    pub elements: usize,
    pub sets: Vec<String>,
    /// Whether the UDP port is open to every source right now (a
    /// first-handshake admission waits for its handshake).
    pub open: bool,
    pub transactions: u64,
    pub last_error: Option<String>,
}

/// The live pre-filter of one gateway.
#[derive(Debug)]
pub struct Filter {
    table: String,
    udp_port: u16,
    elements: nft::Elements,
    reconciler: Reconciler,
    direct_ports: HashMap<String, u16>,
    pinning_window: Duration,
    pins: Pins,
    /// What the kernel should hold (the latest feed version, and the
    /// pinnings since).
    desired: Desired,
    transactions: u64,
    last_error: Option<String>,
}

impl Filter {
    /// Creates (or atomically replaces) the table with every set empty:
    /// from here on, nothing reaches the UDP port or the direct ports
    /// until an admission is applied.
    pub fn install(
        udp_port: u16,
        direct_ports: HashMap<String, u16>,
        pinning_window: Duration,
    ) -> Result<Filter, NftError> {
        let table = table_name(udp_port);
        nft::run_nft(&nft::table_script(
            &table,
            udp_port,
            &sorted_ports(&direct_ports),
        ))?;
        let elements = nft::Elements::open(&table)?;
        Ok(Filter {
            table,
            udp_port,
            elements,
            reconciler: Reconciler::new(),
            direct_ports,
            pinning_window,
            pins: Pins::default(),
            desired: Desired::default(),
            transactions: 0,
            last_error: None,
        })
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    /// Takes in a feed change received at `received`: a whole set makes
    /// the kernel hold exactly what it admits, comparing every element; a
    /// diff (on top of the last state applied, which the caller must have
    /// applied successfully) compares only the elements it touches, so its
    /// cost does not grow with the number of admissions. Returns the
    /// admissions it could not represent.
    pub fn apply<'a>(
        &mut self,
        change: impl Into<FeedChangeRef<'a>>,
        received: Instant,
    ) -> Result<Vec<PlanError>, NftError> {
        let cx = Context {
            direct_ports: &self.direct_ports,
            pinning_window: self.pinning_window,
        };
        match change.into() {
            FeedChangeRef::Whole(state) => {
                let (desired, errors) = Desired::from_state(state, received, cx, &mut self.pins);
                // Not a plain assignment: a port closed for good (the
                // gateway stopping) must stay closed.
                self.desired.replace(desired);
                self.converge(None, Instant::now()).map(|()| errors)
            }
            FeedChangeRef::Diff {
                header,
                changed,
                removed,
            } => {
                let (touched, errors) = self.desired.apply_diff(
                    changed,
                    removed,
                    header.server_time,
                    received,
                    cx,
                    &mut self.pins,
                );
                self.converge(Some(&touched), Instant::now())
                    .map(|()| errors)
            }
        }
    }

    /// The data path pinned a first-handshake admission to `source`: admit
    /// that source in the kernel before the pinning window closes.
    /// Returns whether anything changed (false for a handshake of an
    /// admission pinned earlier).
    pub fn pin(&mut self, admission_id: &str, source: IpAddr) -> Result<bool, NftError> {
        self.pins.pin(admission_id, source);
        match self.desired.pin(admission_id, source) {
            Some(e) => self.converge(Some(&[e]), Instant::now()).map(|()| true),
            // Pinned already, but the last update failed: the kernel may
            // lack it, so everything is compared again.
            None if self.last_error.is_some() => self.converge(None, Instant::now()).map(|()| true),
            None => Ok(false),
        }
    }

    fn converge(&mut self, touched: Option<&[Element]>, now: Instant) -> Result<(), NftError> {
        let desired = std::mem::take(&mut self.desired);
        // A refused transaction leaves the kernel unchanged but the book
        // unsure: the second try flushes every set and adds everything.
        // If that fails too, the table itself may be gone (deleted by hand,
        // or by a firewall reload that flushed the ruleset): the third try
        // creates it again, empty, and adds everything.
        let mut result = self.commit(&desired, touched, now);
        if result.is_err() {
            self.reconciler.failed();
            result = self.commit(&desired, None, now);
        }
        if let Err(e) = &result {
            tracing::warn!(table = %self.table, error = %e, "the pre-filter's table refused a rebuild; creating it again");
            result = self
                .reinstall()
                .and_then(|()| self.commit(&desired, None, now));
        }
        self.desired = desired;
        match &result {
            Ok(()) => self.last_error = None,
            Err(e) => {
                self.reconciler.failed();
                self.last_error = Some(e.to_string());
            }
        }
        result
    }

    /// Creates the table again, atomically and empty, with every set the
    /// book knows of, and a fresh netlink socket.
    fn reinstall(&mut self) -> Result<(), NftError> {
        let sets: Vec<SetId> = self.reconciler.sets().iter().copied().collect();
        let mut script = nft::table_script(
            &self.table,
            self.udp_port,
            &sorted_ports(&self.direct_ports),
        );
        script += &nft::sets_script(&self.table, &sets);
        nft::run_nft(&script)?;
        self.elements = nft::Elements::open(&self.table)?;
        self.reconciler.reset(sets.into_iter().collect());
        Ok(())
    }

    fn commit(
        &mut self,
        desired: &Desired,
        touched: Option<&[Element]>,
        now: Instant,
    ) -> Result<(), NftError> {
        let changes = match touched {
            None => self.reconciler.plan(desired, now),
            Some(t) => self.reconciler.plan_touched(desired, t, now),
        };
        if !changes.is_empty() {
            if !changes.new_sets.is_empty() {
                nft::run_nft(&nft::sets_script(&self.table, &changes.new_sets))?;
                self.reconciler.sets_created(&changes.new_sets);
            }
            self.elements.apply(&changes)?;
            self.transactions += 1;
            tracing::debug!(
                table = %self.table,
                added = changes.add.len(),
                deleted = changes.delete.len(),
                flushed = changes.flush.len(),
                open = ?changes.open,
                "pre-filter updated"
            );
        }
        self.reconciler.committed(desired, &changes, now);
        Ok(())
    }

    /// Closes the port to everyone again (the `open` set of waiting
    /// first-handshake admissions), for a gateway that is stopping; the
    /// admitted sources stay until their timeouts. It stays closed: an
    /// [`Filter::apply`] or [`Filter::pin`] that was already under way
    /// when the feed stopped, and takes the lock after this, keeps the
    /// port closed (see [`Desired::close_open`]).
    pub fn close_open(&mut self) -> Result<(), NftError> {
        self.desired.close_open();
        self.converge(Some(&[]), Instant::now())
    }

    pub fn status(&self) -> FilterStatus {
        FilterStatus {
            table: self.table.clone(),
            elements: self.reconciler.len(),
            sets: self.reconciler.sets().iter().map(|s| s.name()).collect(),
            open: self.reconciler.is_open(Instant::now()),
            transactions: self.transactions,
            last_error: self.last_error.clone(),
        }
    }
}

/// The hushgate tables present in the kernel (`hushgate_PORT`).
pub fn tables() -> Result<Vec<String>, NftError> {
    let out = nft::nft(&["list", "tables", "inet"])?;
    Ok(out
        .lines()
        .filter_map(|l| l.trim().strip_prefix("table inet "))
        .filter(|t| t.starts_with("hushgate_"))
        .map(str::to_string)
        .collect())
}

/// Deletes a gateway's table, opening its ports to the kernel's usual
/// answers again. Returns whether it existed.
pub fn remove_table(udp_port: u16) -> Result<bool, NftError> {
    let table = table_name(udp_port);
    if !tables()?.contains(&table) {
        return Ok(false);
    }
    nft::nft(&["delete", "table", "inet", &table])?;
    Ok(true)
}

/// The table as `nft list table` prints it (with counters).
pub fn show_table(udp_port: u16) -> Result<String, NftError> {
    nft::nft(&["list", "table", "inet", &table_name(udp_port)])
}

/// What the table's drop rules counted: packets and bytes per chain
/// (`tunnel`: the UDP port, `direct`: the direct services' TCP ports).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DropCount {
    pub chain: String,
    pub packets: u64,
    pub bytes: u64,
}

/// Reads the drop counters of the gateway's table on `udp_port` (one
/// `nft list table`, for a metrics scrape; never on the packet path).
pub fn drop_counts(udp_port: u16) -> Result<Vec<DropCount>, NftError> {
    Ok(parse_drop_counts(&show_table(udp_port)?))
}

/// The `counter packets N bytes M drop` rules of each chain of an
/// `nft list table` listing.
pub fn parse_drop_counts(listing: &str) -> Vec<DropCount> {
    let mut chain = None;
    let mut out = Vec::new();
    for line in listing.lines().map(str::trim) {
        if let Some(name) = line
            .strip_prefix("chain ")
            .and_then(|r| r.strip_suffix(" {"))
        {
            chain = Some(name.to_string());
            continue;
        }
        let Some(rest) = line.strip_prefix("counter packets ") else {
            continue;
        };
        let words: Vec<&str> = rest.split_whitespace().collect();
        if let (Some(chain), [packets, "bytes", bytes, "drop", ..]) = (&chain, words.as_slice()) {
            if let (Ok(packets), Ok(bytes)) = (packets.parse(), bytes.parse()) {
                out.push(DropCount {
                    chain: chain.clone(),
                    packets,
                    bytes,
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod drop_count_tests {
    use super::*;

    #[test]
    fn drop_counters_are_read_per_chain() {
        let listing = "table inet hushgate_51820 {\n\
            \tcomment \"hushgate gateway pre-filter\"\n\
            \tchain gate {\n\
            \t\ttype filter hook prerouting priority -450; policy accept;\n\
            \t\tudp dport 51820 fib daddr type local jump tunnel\n\
            \t}\n\
            \tchain tunnel {\n\
            \t\tip saddr & 255.255.255.255 . udp dport @t4_32 accept\n\
            \t\tcounter packets 1234 bytes 56789 drop comment \"not admitted\"\n\
            \t}\n\
            \tchain direct {\n\
            \t\tcounter packets 0 bytes 0 drop comment \"not admitted\"\n\
            \t}\n\
            }\n";
        assert_eq!(
            parse_drop_counts(listing),
            [
                DropCount {
                    chain: "tunnel".into(),
                    packets: 1234,
                    bytes: 56789
                },
                DropCount {
                    chain: "direct".into(),
                    packets: 0,
                    bytes: 0
                },
            ]
        );
    }
}
