use std::process::Command;
use std::sync::OnceLock;

/// Prefix for every namespace this test process creates, so parallel runs (and a
/// hand-run netlab) never collide: `TWILL_NS_PREFIX` if set, else `tw<pid>`.
pub fn run_prefix() -> &'static str {
    static P: OnceLock<String> = OnceLock::new();
    P.get_or_init(|| {
        std::env::var("TWILL_NS_PREFIX").unwrap_or_else(|_| format!("tw{}", std::process::id()))
    })
}

/// Runs a shell command and returns stdout; panics with stderr on failure.
pub fn sh(cmd: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(cmd).output().expect("sh");
    assert!(
        out.status.success(),
        "command failed: {cmd}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A network namespace named `<run prefix>-<tag>`, deleted (with every process in it
/// killed) on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Self {
        crate::require_root();
        let name = format!("{}-{tag}", run_prefix());
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(std::process::Stdio::null())
            .status();
        sh(&format!("ip netns add {name}"));
        let ns = Netns { name };
        ns.sh("ip link set lo up");
        ns
    }

    /// Runs a shell command inside the namespace; panics on failure.
    pub fn sh(&self, cmd: &str) -> String {
        sh(&format!(
            "ip netns exec {} sh -c '{}'",
            self.name,
            cmd.replace('\'', "'\\''")
        ))
    }

    /// Runs `f` on a new thread that has joined this namespace (so sockets it opens, e.g.
    /// netlink, live there), with its own current-thread tokio runtime.
    pub fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = T>>> + Send + 'static,
    ) -> T {
        let path = self.path();
        std::thread::spawn(move || {
            join_netns(&path);
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(f())
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    }

    /// Like [`Netns::sh`] but returns success instead of panicking.
    pub fn try_sh(&self, cmd: &str) -> bool {
        Command::new("ip")
            .args(["netns", "exec", &self.name, "sh", "-c", cmd])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    }
}

impl Netns {
    /// `/run/netns/<name>`, for [`join_netns`] on another thread.
    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }
}

/// Makes the calling thread join the network namespace at `path` (threads it spawns
/// after inherit it; sockets it opens stay there).
pub fn join_netns(path: &str) {
    let file = std::fs::File::open(path).expect("open netns");
    // SAFETY: setns on a valid namespace fd affects only this thread.
    let rc = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "ip netns pids {n} 2>/dev/null | xargs -r kill -9; sleep 0.1; ip netns del {n}",
                n = self.name
            ))
            .status();
    }
}
