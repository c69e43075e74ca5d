//! An Internet emulator for hushgate's netns harness and benchmark (a
//! dev/test tool, not part of the product).
//!
//! This kernel has no `sch_netem` and no `fq`, so delay and loss are made
//! in user space. The emulator is a transparent router hop: in the
//! harness's "inet" namespace, policy routing sends the traffic between the
//! client side and the home side into two TUN devices (one per
//! direction); the `hushgate-netem` binary reads each device, holds every
//! packet as its [`link::Link`] decides (loss, a rate-limited bottleneck
//! with a bounded queue, delay, jitter, reordering) and writes it back into
//! the same device, from where the kernel routes it onward by the main
//! table (the policy rules match on the veth the packet came in on, so
//! nothing written by the emulator is caught again). Packets are never
//! rewritten: the gateway sees the client's real source address, which is
//! what its admission is bound to.
//!
//! Why a TUN router and not a UDP relay or NFQUEUE: a relay terminates the
//! flow and sends from its own address (the gateway's source binding would
//! see the relay), and NFQUEUE holds each packet as a kernel verdict with a
//! per-packet netlink round trip and a queue limit of its own; a TUN device
//! with the kernel's virtio-net offloads hands over a whole GSO batch of
//! the tunnel's UDP in one read and takes a coalesced batch in one write.
//!
//! - [`spec`]: what a direction does, parsed from `delay=20ms,loss=1%,...`;
//! - [`link`]: the sans-IO model of one direction, with time passed in and
//!   a seeded generator, tested in virtual time;
//! - `main.rs`: the thin driver (TUN devices, ppoll, buffers, statistics).

pub mod link;
pub mod spec;
