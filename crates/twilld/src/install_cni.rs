//! `twilld install-cni`: puts the plugin binary and the conflist where the container
//! runtime looks, atomically, for the DaemonSet's init container and for bare nodes.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;

/// The conflist shipped in manifests/, built in so the binary alone is enough.
const DEFAULT_CONFLIST: &str = include_str!("../../../manifests/10-twill.conflist");

#[derive(Debug, Clone, Args)]
pub struct InstallCni {
    /// Where the runtime looks for plugin binaries.
    #[arg(long, default_value = "/opt/cni/bin")]
    pub cni_bin_dir: PathBuf,
    /// Where the runtime looks for network configs.
    #[arg(long, default_value = "/etc/cni/net.d")]
    pub cni_conf_dir: PathBuf,
    /// Plugin binary to install (default: `twill` next to this twilld).
    #[arg(long)]
    pub plugin: Option<PathBuf>,
    /// Conflist to install (default: the built-in 10-twill.conflist).
    #[arg(long)]
    pub conflist: Option<PathBuf>,
    /// File name of the installed conflist.
    #[arg(long, default_value = "10-twill.conflist")]
    pub conflist_name: String,
}

pub fn run(args: &InstallCni) -> Result<()> {
    let plugin = match &args.plugin {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .context("locating twilld")?
            .with_file_name("twill"),
    };
    let conflist = match &args.conflist {
        Some(p) => {
            std::fs::read_to_string(p).with_context(|| format!("--conflist {}", p.display()))?
        }
        None => DEFAULT_CONFLIST.to_string(),
    };
    // Validate everything before writing anything.
    let v: serde_json::Value = serde_json::from_str(&conflist).with_context(|| {
        format!(
            "conflist {}: not valid JSON",
            args.conflist
                .as_deref()
                .unwrap_or(Path::new("(built-in)"))
                .display()
        )
    })?;
    if !v["plugins"]
        .as_array()
        .is_some_and(|p| p.iter().any(|x| x["type"] == "twill"))
    {
        bail!("conflist has no plugin of type \"twill\" in \"plugins\"");
    }
    let binary =
        std::fs::read(&plugin).with_context(|| format!("--plugin {}", plugin.display()))?;
    if args.conflist_name.contains('/') || !args.conflist_name.ends_with(".conflist") {
        bail!(
            "--conflist-name {}: must be a file name ending in .conflist",
            args.conflist_name
        );
    }

    let bin_dst = args.cni_bin_dir.join("twill");
    twill_config::write_atomic(&bin_dst, &binary, 0o755)
        .with_context(|| format!("installing {}", bin_dst.display()))?;
    let conf_dst = args.cni_conf_dir.join(&args.conflist_name);
    twill_config::write_atomic(&conf_dst, conflist.as_bytes(), 0o644)
        .with_context(|| format!("installing {}", conf_dst.display()))?;
    tracing::info!(plugin = %bin_dst.display(), conflist = %conf_dst.display(), "CNI plugin and config installed");
    Ok(())
}
