//! Running a delegate plugin the way libcni does: found in CNI_PATH, our CNI_* environment
//! with the command we choose, the config on stdin, its stdout as the result.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::error::{code, CniError};

pub fn find(plugin: &str, cni_path: &str) -> Result<PathBuf, CniError> {
    if plugin.is_empty() || plugin.contains('/') {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            format!("invalid delegate type {plugin:?}"),
            "",
        ));
    }
    cni_path
        .split(':')
        .filter(|d| !d.is_empty())
        .map(|d| PathBuf::from(d).join(plugin))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            CniError::new(
                code::IO,
                format!("failed to find plugin {plugin:?} in path [{cni_path}]"),
                "",
            )
        })
}

/// Runs `plugin` with CNI_COMMAND=`command`; returns its stdout, or its error result.
pub fn run(plugin: &str, cni_path: &str, command: &str, conf: &Value) -> Result<String, CniError> {
    run_with_env(plugin, cni_path, command, conf, &[])
}

/// The spec versions `plugin` says it speaks (its VERSION command).
pub fn supported_versions(plugin: &str, cni_path: &str) -> Result<Vec<String>, CniError> {
    let out = run(
        plugin,
        cni_path,
        "VERSION",
        &serde_json::json!({"cniVersion": "1.0.0"}),
    )?;
    let v: Value = serde_json::from_str(&out).map_err(|e| {
        CniError::new(
            code::DECODE,
            format!("{plugin} VERSION: unreadable answer"),
            e.to_string(),
        )
    })?;
    Ok(v["supportedVersions"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default())
}

/// Runs the delegate in the config's version, or, when the config asks for 1.1.0 and
/// the delegate predates it (Debian 12's plugins stop at 1.0.0), in 1.0.0 with the result
/// relabelled: 1.1.0 changed no result or error format, only added verbs.
pub fn delegate(
    plugin: &str,
    cni_path: &str,
    command: &str,
    conf: &Value,
    env: &[(&str, &str)],
) -> Result<String, CniError> {
    if conf["cniVersion"] != "1.1.0" || speaks(plugin, cni_path, "1.1.0")? {
        return run_with_env(plugin, cni_path, command, conf, env);
    }
    let mut older = conf.clone();
    older["cniVersion"] = "1.0.0".into();
    if let Some(prev) = older
        .get_mut("prevResult")
        .filter(|p| p["cniVersion"] == "1.1.0")
    {
        prev["cniVersion"] = "1.0.0".into();
    }
    let out = run_with_env(plugin, cni_path, command, &older, env)?;
    Ok(match serde_json::from_str::<Value>(&out) {
        Ok(mut v) if v.get("cniVersion").is_some() => {
            v["cniVersion"] = "1.1.0".into();
            v.to_string()
        }
        _ => out,
    })
}

/// Whether `plugin` speaks spec `version`.
pub fn speaks(plugin: &str, cni_path: &str, version: &str) -> Result<bool, CniError> {
    Ok(supported_versions(plugin, cni_path)?
        .iter()
        .any(|v| v == version))
}

/// `run` with extra environment (e.g. the attachment a GC releases).
pub fn run_with_env(
    plugin: &str,
    cni_path: &str,
    command: &str,
    conf: &Value,
    env: &[(&str, &str)],
) -> Result<String, CniError> {
    let bin = find(plugin, cni_path)?;
    let mut child = Command::new(&bin)
        .env("CNI_COMMAND", command)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| {
            CniError::new(
                code::IO,
                format!("running {}", bin.display()),
                e.to_string(),
            )
        })?;
    let input = serde_json::to_vec(conf).expect("plain json");
    if let Some(mut stdin) = child.stdin.take() {
        // A plugin that exits early closes its stdin; its exit status tells the story.
        let _ = stdin.write_all(&input);
    }
    let out = child.wait_with_output().map_err(|e| {
        CniError::new(
            code::IO,
            format!("waiting for {}", bin.display()),
            e.to_string(),
        )
    })?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        return Ok(stdout);
    }
    // Pass the delegate's own error through when it wrote one.
    let parsed: Option<Value> = serde_json::from_str(&stdout).ok();
    let (c, msg, details) = match parsed {
        Some(v) if v.get("code").is_some() => (
            v["code"].as_u64().unwrap_or(999) as u32,
            v["msg"].as_str().unwrap_or("").to_string(),
            v["details"].as_str().unwrap_or("").to_string(),
        ),
        _ => (
            999,
            format!("{plugin} {command} failed ({})", out.status),
            stdout.trim().to_string(),
        ),
    };
    Err(CniError::new(
        c,
        format!("delegate {plugin}: {msg}"),
        details,
    ))
}
