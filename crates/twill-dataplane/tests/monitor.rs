//! The netlink monitor against the real kernel, in a throw-away namespace.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use twill_dataplane::watch_devices;
use twill_testutil::Netns;

/// Adds host routes `first..first + count` on `v0` in one `ip -batch`, from this thread's
/// namespace.
fn add_routes(first: u32, count: u32) {
    let mut ip = Command::new("ip")
        .args(["-batch", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("ip");
    let mut batch = String::new();
    for i in first..first + count {
        let [_, a, b, c] = (i + 1).to_be_bytes();
        batch.push_str(&format!("route add 10.{a}.{b}.{c}/32 dev v0\n"));
    }
    ip.stdin
        .take()
        .unwrap()
        .write_all(batch.as_bytes())
        .unwrap();
    assert!(ip.wait().unwrap().success(), "ip -batch failed");
}

/// Notifications the kernel drops (the monitor's thread busy while a burst fills its
/// socket) may have been our entries deleted: the monitor raises "removed", though the
/// burst it could read held only additions elsewhere, which alone raise nothing.
#[test]
fn an_overrun_counts_as_a_removal() {
    let ns = Netns::new("mon-overrun");
    // A veth pair: this kernel has no dummy driver.
    ns.sh("ip link add v0 type veth peer name v1 && ip link set v0 up && ip link set v1 up");
    ns.run(|| {
        Box::pin(async move {
            let monitor = watch_devices(&[("flannel.1".into(), None)]).unwrap();
            let removed = monitor.removed_flag();
            tokio::time::sleep(Duration::from_millis(100)).await;
            removed.take();

            // Read as they come: additions on another device are no removal.
            add_routes(0, 10);
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert!(!removed.take(), "10 foreign additions raised 'removed'");

            // This thread runs the monitor's tasks; blocked in ip -batch it reads nothing
            // while 60 000 notifications (~60 MB of skbs) meet a 16 MB buffer.
            add_routes(10, 60_000);
            let raised = tokio::time::timeout(Duration::from_secs(10), async {
                while !removed.take() {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
            .await;
            assert!(raised.is_ok(), "an overrun did not raise 'removed'");
        })
    });
}
