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

/// Versions of the CNI spec this plugin speaks.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0"];
pub const DEFAULT_SUBNET_FILE: &str = "/run/flannel/subnet.env";
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/twill";
