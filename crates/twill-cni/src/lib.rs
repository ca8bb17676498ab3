//! The `twill` CNI plugin, flannel's plugin protocol for protocol: read subnet.env, render
//! a bridge + host-local delegate config, remember it per container, run the delegate.
//!
//! Everything that decides (config parsing, delegate rendering, errors) is pure and lives
//! here; `main.rs` only does the I/O.

pub mod conf;
pub mod error;
pub mod exec;
pub mod state;

pub use conf::{render_delegate, PluginConf};
pub use error::CniError;

/// Versions of the CNI spec this plugin speaks, oldest first: every one flannel's does.
pub const SUPPORTED_VERSIONS: &[&str] = &[
    "0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0",
];
pub const DEFAULT_SUBNET_FILE: &str = "/run/flannel/subnet.env";
/// flannel's plugin keeps its per-container state here; so do we, so that a pod added by
/// either plugin is deleted by either after an in-place migration.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/flannel";
/// Where earlier twill releases kept it: still read (DEL, CHECK, GC) when the config
/// names no dataDir, so pods added by those releases are deleted too.
pub const LEGACY_DATA_DIR: &str = "/var/lib/cni/twill";

/// Whether spec version `v` is at least `min` (both among SUPPORTED_VERSIONS).
pub fn version_at_least(v: &str, min: &str) -> bool {
    let at = |x: &str| SUPPORTED_VERSIONS.iter().position(|s| *s == x);
    matches!((at(v), at(min)), (Some(a), Some(b)) if a >= b)
}
