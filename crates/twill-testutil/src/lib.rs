//! Fixtures for tests that need real parts: an etcd server, network namespaces, a proxy
//! that can cut connections, and a (labelled) fake of the Kubernetes nodes API. Everything cleans up on drop, including after a panic.

mod etcd;
pub mod fake_kube;
pub mod kube_nodes;
mod netns;
mod proxy;

pub use etcd::{Etcd, TlsFiles};
pub use fake_kube::{FakeKube, FLANNEL_CLUSTER_ROLE};
pub use netns::{join_netns, run_prefix, sh, Netns};
pub use proxy::TcpProxy;

/// Fails the test loudly unless it runs as root: root-only tests never pass by skipping.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    assert_eq!(
        uid, 0,
        "this test needs root (network namespaces, netlink); run it via scripts/test.sh"
    );
}

/// A process the test started, killed (and reaped) when the test ends, however it ends.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Polls `f` every 50 ms until it returns true or `secs` pass.
pub fn wait_until(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while std::time::Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("timed out after {secs}s waiting for {what}");
}
