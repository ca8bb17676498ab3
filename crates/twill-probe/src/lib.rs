//! Per-peer overlay probes: does a packet get through to each peer, over the overlay and
//! over the underlay, at the pod MTU? Verdicts are pure (`verdict`); the probing keeps every
//! peer's next round in one timer queue, a task only for a round in flight (`prober`), over
//! raw ICMP sockets (`icmp`).

pub mod icmp;
pub mod prober;
pub mod verdict;

pub use icmp::{Echo, IcmpEcho};
pub use prober::{probe, run, Report, Target, Timing};
pub use verdict::{judge, next_size, Probe, Round, Verdict};
