//! `twill`, the CNI plugin. See the library for what it does; this is the protocol glue.

use std::io::Read;

use serde_json::{json, Value};
use twill_cni::error::code;
use twill_cni::{exec, render_delegate, state, CniError, PluginConf, SUPPORTED_VERSIONS};
use twill_config::SubnetEnv;

struct Env {
    command: String,
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

fn read_env() -> Result<Env, CniError> {
    let command = env_var("CNI_COMMAND")?;
    if command == "VERSION" {
        return Ok(Env {
            command,
            container_id: String::new(),
            cni_path: String::new(),
        });
    }
    let container_id = env_var("CNI_CONTAINERID")?;
    state::validate_container_id(&container_id)?;
    if command != "DEL" {
        env_var("CNI_NETNS")?;
    }
    env_var("CNI_IFNAME")?;
    let cni_path = env_var("CNI_PATH")?;
    Ok(Env {
        command,
        container_id,
        cni_path,
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

fn add(env: &Env, conf: &PluginConf) -> Result<String, CniError> {
    let subnet_env = read_subnet_env(&conf.subnet_file)?;
    let delegate = render_delegate(conf, &subnet_env)?;
    // Saved first: if we die half-way, DEL still knows what to undo.
    state::save(
        &conf.data_dir,
        &env.container_id,
        &serde_json::to_vec(&delegate).expect("json"),
    )?;
    let plugin = delegate_type(&delegate);
    match exec::run(&plugin, &env.cni_path, "ADD", &delegate) {
        Ok(out) => Ok(out),
        Err(e) => {
            // A failed ADD must not leak the address host-local may have reserved.
            let _ = exec::run(&plugin, &env.cni_path, "DEL", &delegate);
            let _ = state::remove(&conf.data_dir, &env.container_id);
            Err(e)
        }
    }
}

fn del(env: &Env, conf: &PluginConf) -> Result<String, CniError> {
    let Some(saved) = state::load(&conf.data_dir, &env.container_id)? else {
        return Ok(String::new());
    };
    let Ok(delegate) = serde_json::from_slice::<Value>(&saved) else {
        // Unreadable state can't be acted on; keeping it would fail every retry.
        state::remove(&conf.data_dir, &env.container_id)?;
        return Ok(String::new());
    };
    exec::run(&delegate_type(&delegate), &env.cni_path, "DEL", &delegate)?;
    state::remove(&conf.data_dir, &env.container_id)?;
    Ok(String::new())
}

fn check(env: &Env, conf: &PluginConf) -> Result<String, CniError> {
    if matches!(conf.cni_version.as_str(), "0.3.0" | "0.3.1") {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            "CHECK needs cniVersion 0.4.0 or later",
            "",
        ));
    }
    let saved = state::load(&conf.data_dir, &env.container_id)?.ok_or_else(|| {
        CniError::new(
            code::UNKNOWN_CONTAINER,
            format!("no state for container {}", env.container_id),
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
    exec::run(&delegate_type(&delegate), &env.cni_path, "CHECK", &delegate)?;
    Ok(String::new())
}

fn run(version: &mut String) -> Result<String, CniError> {
    let env = read_env()?;
    let mut input = Vec::new();
    std::io::stdin()
        .read_to_end(&mut input)
        .map_err(|e| CniError::new(code::IO, "reading stdin", e.to_string()))?;
    if env.command == "VERSION" {
        if let Ok(v) = serde_json::from_slice::<Value>(&input) {
            if let Some(s) = v["cniVersion"].as_str() {
                *version = s.to_string();
            }
        }
        return Ok(
            json!({"cniVersion": version, "supportedVersions": SUPPORTED_VERSIONS}).to_string(),
        );
    }
    let conf = PluginConf::parse(&input)?;
    *version = conf.cni_version.clone();
    match env.command.as_str() {
        "ADD" => add(&env, &conf),
        "DEL" => del(&env, &conf),
        "CHECK" => check(&env, &conf),
        other => Err(CniError::new(
            code::INVALID_ENV,
            format!("unknown CNI_COMMAND {other:?}"),
            "expected ADD, DEL, CHECK or VERSION",
        )),
    }
}

fn main() -> std::process::ExitCode {
    let mut version = "1.0.0".to_string();
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
