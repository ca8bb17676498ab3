//! Routers for the BGP tests, started by the test inside its namespaces and killed with
//! them: FRR (zebra + bgpd) as the site's router.

use std::process::{Child, Command, Stdio};

use twill_testutil::wait_until;

/// Kills the daemon when the test ends, however it ends.
pub use twill_testutil::KillOnDrop as Daemon;

pub fn need(bin: &str) {
    assert!(
        std::path::Path::new(bin).exists(),
        "{bin} missing: scripts/setup.sh installs bird2, exabgp and frr"
    );
}

/// FRR (zebra + bgpd) as the site's router in `ns`, AS 64513, with `neighbors` (AS 64512).
/// FRR's daemons run as user frr in a private mount namespace whose /run is a fresh tmpfs,
/// so nothing of theirs lands on the host. Routes it learns go to its kernel table.
pub fn frr_router(
    ns: &str,
    dir: &std::path::Path,
    router_id: &str,
    neighbors: &[String],
) -> Daemon {
    need("/usr/lib/frr/bgpd");
    let d = dir.join("frr");
    std::fs::create_dir_all(&d).unwrap();
    let mut conf = format!(
        "frr defaults traditional\nhostname router\nrouter bgp 64513\n bgp router-id {router_id}\n no bgp ebgp-requires-policy\n bgp graceful-restart\n"
    );
    for n in neighbors {
        conf.push_str(&format!(" neighbor {n} remote-as 64512\n"));
    }
    std::fs::write(d.join("frr.conf"), conf).unwrap();
    let dd = d.display();
    let script = format!(
        "set -e\nmount -t tmpfs -o mode=755 tmpfs /run\nmkdir -p /run/frr && chown frr:frr /run/frr\n\
         chown -R frr:frr {dd} && chmod 755 {dd}\n\
         /usr/lib/frr/zebra -i {dd}/zebra.pid -z {dd}/zserv.api --vty_socket {dd} -f /dev/null --log file:{dd}/zebra.log &\n\
         for i in $(seq 50); do [ -S {dd}/zserv.api ] && break; sleep 0.1; done\n\
         exec /usr/lib/frr/bgpd -i {dd}/bgpd.pid -z {dd}/zserv.api --vty_socket {dd} -f {dd}/frr.conf --log file:{dd}/bgpd.log\n"
    );
    // frr (the daemons' user) must reach the directory: open the path down to it.
    let mut p = d.parent();
    while let Some(dir) =
        p.filter(|p| p.starts_with(std::env::temp_dir()) && *p != std::env::temp_dir())
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755));
        p = dir.parent();
    }
    Daemon(
        Command::new("ip")
            .args(["netns", "exec", ns, "unshare", "-m", "sh", "-c", &script])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

/// BGP routes in the router's kernel table, as (prefix, next hop).
pub fn kernel_bgp_routes(ns: &str) -> Vec<(String, String)> {
    let out = Command::new("ip")
        .args(["-n", ns, "-4", "route", "show", "proto", "bgp"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            let via = w.iter().position(|x| *x == "via")?;
            Some((w[0].to_string(), w[via + 1].to_string()))
        })
        .collect()
}

/// `ip monitor route` on a router's namespace, for "nothing was withdrawn while ...".
pub struct RouteWatch(Child);

impl RouteWatch {
    pub fn start(ns: &str) -> RouteWatch {
        let child = Command::new("ip")
            .args(["-n", ns, "monitor", "route"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        // ip needs a moment to subscribe before the event it is there to see.
        std::thread::sleep(std::time::Duration::from_millis(300));
        RouteWatch(child)
    }

    /// Stops watching; every deletion it saw of a route whose line contains `prefix`.
    pub fn deleted(mut self, prefix: &str) -> Vec<String> {
        let _ = self.0.kill();
        let out = self.0.wait_with_output().unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with("Deleted") && l.contains(prefix))
            .map(str::to_string)
            .collect()
    }
}

/// BIRD as a node's engine, started as its own unit would be, on twilld's files.
pub fn node_bird(ns: &str, dir: &std::path::Path) -> Daemon {
    let conf = dir.join("bird.conf");
    wait_until(20, "twilld to write BIRD's config", || conf.exists());
    Daemon(
        Command::new("ip")
            .args(["netns", "exec", ns, "bird", "-f", "-c"])
            .arg(&conf)
            .arg("-s")
            .arg(dir.join("bird.ctl"))
            .arg("-P")
            .arg(dir.join("bird.pid"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}
