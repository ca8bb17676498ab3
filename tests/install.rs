//! `twilld install-cni` into temporary directories, as the DaemonSet's init container runs it.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use twill_e2e::twilld_bin;

fn install(args: &[&str]) -> std::process::Output {
    Command::new(twilld_bin())
        .arg("install-cni")
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn installs_plugin_and_conflist_atomically_and_idempotently() {
    let d = tempfile::tempdir().unwrap();
    let (bin, conf) = (d.path().join("bin"), d.path().join("net.d"));
    let args = [
        &format!("--cni-bin-dir={}", bin.display()),
        &format!("--cni-conf-dir={}", conf.display()),
    ];
    let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    for _ in 0..2 {
        let out = install(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let plugin = bin.join("twill");
    let built = twilld_bin().with_file_name("twill");
    assert_eq!(
        std::fs::read(&plugin).unwrap(),
        std::fs::read(built).unwrap()
    );
    assert_eq!(
        std::fs::metadata(&plugin).unwrap().permissions().mode() & 0o777,
        0o755
    );
    let text = std::fs::read_to_string(conf.join("10-twill.conflist")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"name":"cbr0","cniVersion":"1.0.0","plugins":[
            {"type":"twill","delegate":{"hairpinMode":true,"isDefaultGateway":true}},
            {"type":"portmap","capabilities":{"portMappings":true}}]})
    );
    assert_eq!(
        std::fs::read_dir(&conf).unwrap().count(),
        1,
        "no temp files left"
    );
    assert_eq!(std::fs::read_dir(&bin).unwrap().count(), 1);
}

#[test]
fn a_bad_conflist_installs_nothing() {
    let d = tempfile::tempdir().unwrap();
    let bad = d.path().join("bad.conflist");
    std::fs::write(&bad, "{\"plugins\": [").unwrap();
    let (bin, conf) = (d.path().join("bin"), d.path().join("net.d"));
    let out = install(&[
        &format!("--cni-bin-dir={}", bin.display()),
        &format!("--cni-conf-dir={}", conf.display()),
        &format!("--conflist={}", bad.display()),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.conflist") && err.contains("not valid JSON"),
        "{err}"
    );
    assert!(!bin.exists() && !conf.exists(), "nothing half-installed");
}
