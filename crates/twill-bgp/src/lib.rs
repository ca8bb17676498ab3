//! BGP, spoken by established engines and driven by twill: BIRD 2 announces a node's own
//! pod subnets (`bird`, with the settings of `settings`), ExaBGP announces every node's
//! from one place (`exabgp`). Nothing here speaks BGP itself, and nothing here knows the
//! daemon: sessions are reported through `SessionSink`.

pub mod bird;
pub mod exabgp;
pub mod settings;

pub use bird::{
    apply, parse_protocols, protocol_name, render, router_id, sessions, spawn, withdrawn, Announce,
    Session, SessionSink,
};
pub use exabgp::{feed_lines, Announced};
pub use settings::{effective, node_overrides, BgpOptions, ASN_ANNOTATION, PEERS_ANNOTATION};
