//! The tunnel's TCP over emulated Internet paths, in virtual time (see
//! `sim/mod.rs`): every figure asserted here is deterministic, so the
//! bounds are about TCP's behaviour, not about the machine's speed.

mod sim;

use std::time::Duration;

use sim::{run, Scenario};

const MS: Duration = Duration::from_millis(1);

#[test]
fn simulation_is_deterministic() {
    let mut s = Scenario::internet(20 * MS, 0.01);
    s.duration = Duration::from_secs(2);
    let (a, b) = (run(&s), run(&s));
    assert!(a.bytes > 0);
    assert_eq!(a, b);
    s.seed = 2;
    assert_ne!(run(&s).forward, a.forward, "the seed drives the losses");
}
