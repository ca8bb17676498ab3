//! One node of a test cluster: a namespace on the underlay switch and the daemon (twilld,
//! or the real flanneld) run in it.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use twill_testutil::{wait_until, Netns};

use crate::{flanneld_bin, twilld_bin};

pub struct Node {
    pub ns: Netns,
    /// Its underlay address: 198.18.0.<n>, or 2001:2::<n> on an IPv6-only underlay.
    pub ip: String,
    /// The etcd endpoint its daemon and subcommands are given.
    pub etcd_url: String,
    pub dir: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub(crate) child: Option<Child>,
    /// Whether flanneld is (or was last) the node's daemon rather than twilld.
    pub runs_flanneld: bool,
}

impl Node {
    pub fn subnet_env(&self) -> PathBuf {
        self.dir.join("subnet.env")
    }

    /// The daemon's log: twilld's, and flanneld's where the node ran it.
    pub fn log(&self) -> String {
        ["twilld.log", "flanneld.log"]
            .iter()
            .filter_map(|f| std::fs::read_to_string(self.dir.join(f)).ok())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Starts the real flanneld instead, with the flags twilld would get (flanneld's names:
    /// twill keeps them) plus `args`.
    pub fn start_flanneld(&mut self) {
        assert!(self.child.is_none(), "already running");
        let bin = flanneld_bin();
        self.runs_flanneld = true;
        self.spawn(&bin, "flanneld.log");
    }

    /// Starts twilld in the node's namespace with the standard flags plus `args`.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "already running");
        self.runs_flanneld = false;
        self.spawn(&twilld_bin(), "twilld.log");
    }

    fn spawn(&mut self, bin: &Path, log: &str) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(log))
            .unwrap();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns.name])
            .arg(bin)
            .arg(format!("--etcd-endpoints={}", self.etcd_url))
            .arg(format!("--subnet-file={}", self.subnet_env().display()));
        if !chooses_underlay(&self.args) {
            cmd.arg("--iface=eth0");
        }
        cmd.args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        dies_with_the_test(&mut cmd);
        self.child = Some(cmd.spawn().expect("spawn the daemon"));
    }

    /// Runs `twilld <args>` in the node's namespace to completion (a subcommand, or a
    /// daemon expected to exit): whether it succeeded, and its stdout then stderr.
    pub fn twilld(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns.name])
            .arg(twilld_bin())
            .args(args)
            .output()
            .expect("run twilld");
        (out.status.success(), crate::text(&out))
    }

    /// Runs `twilld <args>` (a subcommand: doctor, cleanup) against this node as its
    /// daemon runs: the same etcd and subnet.env, and eth0 unless `args` choose.
    pub fn subcommand(&self, args: &[&str]) -> (bool, String) {
        let etcd = format!("--etcd-endpoints={}", self.etcd_url);
        let subnet_file = format!("--subnet-file={}", self.subnet_env().display());
        let mut all = args.to_vec();
        if !chooses_underlay(args) {
            all.push("--iface=eth0");
        }
        all.extend([etcd.as_str(), subnet_file.as_str()]);
        self.twilld(&all)
    }

    /// Sends `sig` and waits for the process to end.
    pub fn stop(&mut self, sig: i32) -> Option<i32> {
        let mut c = self.child.take()?;
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(c.id() as i32, sig) };
        c.wait().ok().and_then(|s| s.code())
    }

    /// Sends `sig` to the running daemon without waiting.
    pub fn signal(&self, sig: i32) {
        let c = self.child.as_ref().expect("running");
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(c.id() as i32, sig) };
    }

    /// The daemon's pid (`ip netns exec` execs it, so it is the daemon's own).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// CPU ticks (user + system, USER_HZ) the daemon has used so far.
    pub fn cpu_ticks(&self) -> u64 {
        let pid = self.pid().expect("running");
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        // After the ")" closing the command: state is field 3, utime 14, stime 15.
        let rest: Vec<&str> = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .collect();
        rest[11].parse::<u64>().unwrap() + rest[12].parse::<u64>().unwrap()
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Waits for the process to exit by itself; returns its exit code.
    pub fn wait_exit(&mut self, secs: u64) -> i32 {
        let c = self.child.as_mut().expect("running");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                self.child = None;
                return st.code().unwrap_or(-1);
            }
            assert!(
                std::time::Instant::now() < deadline,
                "twilld did not exit in {secs}s\n{}",
                self.log()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    pub fn wait_ready(&self) {
        let p = self.subnet_env();
        wait_until(30, &format!("{} to write subnet.env", self.ns.name), || {
            p.exists()
        });
    }

    /// FLANNEL_SUBNET's network, e.g. "10.244.3.0/24".
    pub fn lease(&self) -> String {
        let text = std::fs::read_to_string(self.subnet_env()).unwrap();
        let v = text
            .lines()
            .find_map(|l| l.strip_prefix("FLANNEL_SUBNET="))
            .expect("FLANNEL_SUBNET");
        let (ip, len) = v.split_once('/').unwrap();
        let mut o: Vec<u8> = ip.split('.').map(|x| x.parse().unwrap()).collect();
        o[3] = 0;
        format!("{}.{}.{}.{}/{len}", o[0], o[1], o[2], o[3])
    }

    /// FLANNEL_IPV6_SUBNET's network, e.g. "fd00:10:244:3::/64".
    pub fn lease6(&self) -> String {
        let env = std::fs::read_to_string(self.subnet_env()).unwrap();
        env.lines()
            .find_map(|l| l.strip_prefix("FLANNEL_IPV6_SUBNET="))
            .expect("FLANNEL_IPV6_SUBNET")
            .replace("::1/", "::/")
    }

    /// The routes `cmd` (an `ip route show`) lists with a gateway, as "<subnet> via
    /// <gateway>", sorted: DirectRouting's and host-gw's routes on the underlay.
    pub fn gateway_routes(&self, cmd: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .ns
            .sh(cmd)
            .lines()
            .filter_map(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                (w.get(1) == Some(&"via")).then(|| format!("{} via {}", w[0], w[2]))
            })
            .collect();
        v.sort();
        v
    }

    /// The destinations routed into flannel.1 (the peers' subnets), sorted.
    pub fn vxlan_subnets(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .ns
            .sh("ip -4 route show dev flannel.1")
            .lines()
            .filter_map(|l| l.split_whitespace().next().map(str::to_string))
            .collect();
        v.sort();
        v
    }

    pub fn vtep_mac(&self) -> String {
        let j = self.ns.sh("ip -j link show flannel.1");
        let v: serde_json::Value = serde_json::from_str(&j).unwrap();
        v[0]["address"].as_str().unwrap().to_string()
    }
}

/// Has the process `cmd` starts killed when the test process dies, so a failed or
/// interrupted test leaves no daemon or server behind.
pub fn dies_with_the_test(cmd: &mut Command) {
    // SAFETY: prctl before exec only sets this process's parent-death signal.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

/// Whether twilld flags pick the underlay themselves (else the tests' nodes use eth0);
/// --public-ip picks it too.
fn chooses_underlay(args: &[impl AsRef<str>]) -> bool {
    args.iter()
        .map(AsRef::as_ref)
        .any(|a| a.starts_with("--iface") || a.starts_with("--public-ip="))
}
