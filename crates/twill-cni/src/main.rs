//! `twill`, the CNI plugin. See the library for what it does; this is the protocol glue.

use std::collections::HashSet;
use std::io::Read;

use serde_json::{json, Value};
use twill_cni::error::code;
use twill_cni::{
    exec, render_delegate, state, version_at_least, CniError, PluginConf, SUPPORTED_VERSIONS,
};
use twill_config::SubnetEnv;

/// One attachment's CNI_* environment (ADD, DEL, CHECK).
struct Attachment {
    container_id: String,
    cni_path: String,
}

fn env_var(name: &str) -> Result<String, CniError> {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => Ok(v),
        _ => Err(CniError::new(
            code::INVALID_ENV,
            format!("{name} is not set"),
            "the container runtime must set it",
        )),
    }
}

fn attachment(command: &str) -> Result<Attachment, CniError> {
    let container_id = env_var("CNI_CONTAINERID")?;
    state::validate_container_id(&container_id)?;
    if command != "DEL" {
        env_var("CNI_NETNS")?;
    }
    env_var("CNI_IFNAME")?;
    Ok(Attachment {
        container_id,
        cni_path: env_var("CNI_PATH")?,
    })
}

fn read_subnet_env(path: &str) -> Result<SubnetEnv, CniError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            CniError::new(
                code::TRY_AGAIN_LATER,
                format!(
                    "{path} does not exist: twilld is not running or not ready yet on this node"
                ),
                "twilld writes it once it holds a subnet lease; check the twilld pod or service",
            )
        } else {
            CniError::new(code::IO, format!("reading {path}"), e.to_string())
        }
    })?;
    SubnetEnv::parse(&text, path)
        .map_err(|e| CniError::new(code::INVALID_CONFIG, e.to_string(), ""))
}

fn delegate_type(d: &Value) -> String {
    d["type"].as_str().unwrap_or("bridge").to_string()
}

fn add(a: &Attachment, conf: &PluginConf) -> Result<String, CniError> {
    let subnet_env = read_subnet_env(&conf.subnet_file)?;
    let delegate = render_delegate(conf, &subnet_env)?;
    // Saved first: if we die half-way, DEL still knows what to undo.
    state::save(
        &conf.data_dir,
        &a.container_id,
        &serde_json::to_vec(&delegate).expect("json"),
    )?;
    let plugin = delegate_type(&delegate);
    match exec::delegate(&plugin, &a.cni_path, "ADD", &delegate, &[]) {
        Ok(out) => Ok(out),
        Err(e) => {
            // A failed ADD must not leak the address host-local may have reserved.
            let _ = exec::delegate(&plugin, &a.cni_path, "DEL", &delegate, &[]);
            let _ = state::remove(&conf.data_dir, &a.container_id);
            Err(e)
        }
    }
}

fn del(a: &Attachment, conf: &PluginConf) -> Result<String, CniError> {
    let Some((dir, saved)) = state::find(&state::read_dirs(conf), &a.container_id)? else {
        return Ok(String::new());
    };
    let Ok(delegate) = serde_json::from_slice::<Value>(&saved) else {
        // Unreadable state can't be acted on; keeping it would fail every retry.
        state::remove(dir, &a.container_id)?;
        return Ok(String::new());
    };
    exec::delegate(
        &delegate_type(&delegate),
        &a.cni_path,
        "DEL",
        &delegate,
        &[],
    )?;
    state::remove(dir, &a.container_id)?;
    Ok(String::new())
}

fn check(a: &Attachment, conf: &PluginConf) -> Result<String, CniError> {
    let (_, saved) = state::find(&state::read_dirs(conf), &a.container_id)?.ok_or_else(|| {
        CniError::new(
            code::UNKNOWN_CONTAINER,
            format!("no state for container {}", a.container_id),
            "",
        )
    })?;
    let mut delegate: Value = serde_json::from_slice(&saved).map_err(|e| {
        CniError::new(
            code::DECODE,
            "stored delegate config is unreadable",
            e.to_string(),
        )
    })?;
    if let Some(prev) = &conf.prev_result {
        delegate["prevResult"] = twill_cni::conf::with_implied_gateways(prev);
    }
    exec::delegate(
        &delegate_type(&delegate),
        &a.cni_path,
        "CHECK",
        &delegate,
        &[],
    )?;
    Ok(String::new())
}

/// STATUS (CNI 1.1.0): ready when subnet.env is there and complete, and the delegate, if
/// it speaks 1.1.0, says it is ready too.
fn status(conf: &PluginConf) -> Result<String, CniError> {
    let not_ready = |e: CniError| {
        CniError::new(
            code::NOT_AVAILABLE,
            format!("twill is not ready: {}", e.msg),
            e.details,
        )
    };
    let env = read_subnet_env(&conf.subnet_file).map_err(not_ready)?;
    let delegate = render_delegate(conf, &env).map_err(not_ready)?;
    if let Ok(cni_path) = env_var("CNI_PATH") {
        let plugin = delegate_type(&delegate);
        if exec::speaks(&plugin, &cni_path, "1.1.0")? {
            exec::run(&plugin, &cni_path, "STATUS", &delegate)?;
        }
    }
    Ok(String::new())
}

/// GC (CNI 1.1.0): every saved attachment not in `cni.dev/valid-attachments` is deleted
/// through its delegate as DEL would (which gives its address back to host-local) and its
/// state removed; then a delegate that speaks 1.1.0 gets the GC itself. Each stale
/// attachment is tried even when another fails.
fn gc(conf: &PluginConf) -> Result<String, CniError> {
    let valid = conf.valid_attachments.as_ref().ok_or_else(|| {
        CniError::new(
            code::INVALID_CONFIG,
            "GC needs cni.dev/valid-attachments",
            "without it every attachment would look stale",
        )
    })?;
    let cni_path = env_var("CNI_PATH")?;
    let keep: HashSet<&str> = valid.iter().map(|(id, _)| id.as_str()).collect();
    // The saved config has no interface name; Kubernetes always uses eth0.
    let ifname = std::env::var("CNI_IFNAME")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "eth0".into());
    let mut failed = Vec::new();
    for dir in state::read_dirs(conf) {
        for id in state::list(dir)? {
            if keep.contains(id.as_str()) {
                continue;
            }
            if let Err(e) = release_stale(dir, &id, &ifname, &cni_path) {
                failed.push(format!("{id}: {e}"));
            }
        }
    }
    if let Ok(env) = read_subnet_env(&conf.subnet_file) {
        let mut delegate = render_delegate(conf, &env)?;
        let plugin = delegate_type(&delegate);
        if exec::speaks(&plugin, &cni_path, "1.1.0")? {
            delegate["cni.dev/valid-attachments"] = valid
                .iter()
                .map(|(id, ifname)| json!({"containerID": id, "ifname": ifname}))
                .collect();
            if let Err(e) = exec::run(&plugin, &cni_path, "GC", &delegate) {
                failed.push(format!("delegate GC: {e}"));
            }
        }
    }
    if failed.is_empty() {
        return Ok(String::new());
    }
    Err(CniError::new(
        code::IO,
        format!("GC failed for {} attachment(s)", failed.len()),
        failed.join("; "),
    ))
}

fn release_stale(dir: &str, id: &str, ifname: &str, cni_path: &str) -> Result<(), CniError> {
    let Some(saved) = state::load(dir, id)? else {
        return Ok(());
    };
    if let Ok(delegate) = serde_json::from_slice::<Value>(&saved) {
        let env = [
            ("CNI_CONTAINERID", id),
            ("CNI_IFNAME", ifname),
            ("CNI_NETNS", ""),
        ];
        exec::delegate(&delegate_type(&delegate), cni_path, "DEL", &delegate, &env)?;
    }
    state::remove(dir, id)
}

/// The spec gates verbs by the config's version: CHECK from 0.4.0, STATUS and GC from 1.1.0.
fn verb_allowed(command: &str, version: &str) -> Result<(), CniError> {
    let since = match command {
        "CHECK" => "0.4.0",
        "STATUS" | "GC" => "1.1.0",
        _ => return Ok(()),
    };
    if version_at_least(version, since) {
        return Ok(());
    }
    Err(CniError::new(
        code::INCOMPATIBLE_VERSION,
        format!("{command} needs cniVersion {since} or later, the config says {version}"),
        "",
    ))
}

fn run(version: &mut String) -> Result<String, CniError> {
    let command = env_var("CNI_COMMAND")?;
    let mut input = Vec::new();
    std::io::stdin()
        .read_to_end(&mut input)
        .map_err(|e| CniError::new(code::IO, "reading stdin", e.to_string()))?;
    // A config refused for what else it holds is still answered in the version it names,
    // when that is one we speak (the runtime parses the error by it).
    if let Some(s) = serde_json::from_slice::<Value>(&input)
        .ok()
        .and_then(|v| v["cniVersion"].as_str().map(str::to_string))
    {
        if command == "VERSION" || SUPPORTED_VERSIONS.contains(&s.as_str()) {
            *version = s;
        }
    }
    if command == "VERSION" {
        return Ok(
            json!({"cniVersion": version, "supportedVersions": SUPPORTED_VERSIONS}).to_string(),
        );
    }
    let conf = PluginConf::parse(&input)?;
    *version = conf.version().to_string();
    verb_allowed(&command, conf.version())?;
    match command.as_str() {
        "ADD" => add(&attachment("ADD")?, &conf),
        "DEL" => del(&attachment("DEL")?, &conf),
        "CHECK" => check(&attachment("CHECK")?, &conf),
        "STATUS" => status(&conf),
        "GC" => gc(&conf),
        other => Err(CniError::new(
            code::INVALID_ENV,
            format!("unknown CNI_COMMAND {other:?}"),
            "expected ADD, DEL, CHECK, STATUS, GC or VERSION",
        )),
    }
}

fn main() -> std::process::ExitCode {
    let mut version = "1.1.0".to_string();
    match run(&mut version) {
        Ok(out) => {
            print!("{out}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            println!("{}", e.to_json(&version));
            std::process::ExitCode::FAILURE
        }
    }
}
