//! twilld as a library: the daemon and its subcommands, so their decisions (the loop's
//! timing in `schedule`, lease judging in `policy`, the checks of `doctor`) are unit-tested
//! apart from the binary, which is only `main.rs`: flags, logging, the runtime.

pub mod cleanup;
pub mod cli;
pub mod daemon;
pub mod doctor;
pub mod exabgp;
pub mod explain;
pub mod heap;
mod http;
pub mod install_cni;
mod labels;
pub mod network_policy;
pub mod node;
pub mod options;
pub mod policy;
mod policy_metrics;
mod probe_metrics;
pub mod probes;
mod process_metrics;
mod procs;
pub mod repairs;
pub mod schedule;
pub mod settings;
pub mod startup;
pub mod status;
mod telemetry;
