//! The Kubernetes store against a FAKE nodes API (twill_testutil::FakeKube): no
//! kube-apiserver can be installed here. The client is the real kube-rs one, over HTTP.

use std::time::Duration;

use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use twill_config::NetConf;
use twill_kube::{KubeOptions, KubeStore};
use twill_store::{
    AcquireRequest, LeaseAttrs, LeaseKey, PeerEvent, PeerTable, StoreError, SubnetManager,
    WatchEvent,
};
use twill_testutil::FakeKube;

const PREFIX: &str = "flannel.alpha.coreos.com";

fn opts(fake: &FakeKube, node: &str) -> KubeOptions {
    KubeOptions {
        api_url: Some(fake.url()),
        annotation_prefix: PREFIX.into(),
        node_name: Some(node.into()),
        set_network_unavailable: true,
        ..Default::default()
    }
}

fn request(mac: &str, ip: &str) -> AcquireRequest {
    AcquireRequest {
        conf: NetConf::parse(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#)
            .unwrap()
            .0,
        attrs: LeaseAttrs::vxlan(ip.parse().unwrap(), 1, mac),
        previous: LeaseKey { v4: None, v6: None },
        ttl: Duration::from_secs(3600),
    }
}

fn annotation(fake: &FakeKube, node: &str, name: &str) -> Option<String> {
    fake.node(node)?["metadata"]["annotations"][format!("{PREFIX}/{name}")]
        .as_str()
        .map(str::to_string)
}

#[tokio::test]
async fn podcidr_missing_then_assigned_annotations_written_once_mac_reused() {
    let fake = FakeKube::start_local();
    fake.add_node("n1", None);
    let store = KubeStore::connect(&opts(&fake, "n1")).await.unwrap();
    let req = request("0a:11:22:33:44:55", "198.18.0.1");

    let err = store.acquire(&req).await.unwrap_err();
    assert!(matches!(err, StoreError::Waiting(_)), "{err:?}");
    assert!(err.to_string().contains("--allocate-node-cidrs"), "{err}");
    assert_eq!(
        fake.patches_to("/api/v1/nodes/n1/status"),
        0,
        "nothing written before a podCIDR"
    );

    fake.set_pod_cidr("n1", "10.244.5.0/24");
    let held = store.acquire(&req).await.unwrap();
    assert_eq!(held.key.to_string(), "10.244.5.0-24");
    assert_eq!(
        annotation(&fake, "n1", "kube-subnet-manager").as_deref(),
        Some("true")
    );
    assert_eq!(
        annotation(&fake, "n1", "backend-type").as_deref(),
        Some("vxlan")
    );
    assert_eq!(
        annotation(&fake, "n1", "public-ip").as_deref(),
        Some("198.18.0.1")
    );
    assert_eq!(
        annotation(&fake, "n1", "backend-data").as_deref(),
        Some(r#"{"VNI":1,"VtepMAC":"0a:11:22:33:44:55"}"#)
    );
    let cond = fake.node("n1").unwrap()["status"]["conditions"][0].clone();
    assert_eq!(cond["type"], "NetworkUnavailable");
    assert_eq!(cond["status"], "False");
    assert_eq!(cond["reason"], "TwillIsUp");
    // One patch each (annotations, condition), both through the status subresource as
    // flanneld's (flannel's ClusterRole grants no nodes: patch), with kube's request shape.
    assert_eq!(fake.patches_to("/api/v1/nodes/n1"), 0);
    assert_eq!(fake.patches_to("/api/v1/nodes/n1/status"), 2);
    let patch = fake
        .requests()
        .into_iter()
        .find(|r| r.method == "PATCH")
        .unwrap();
    assert_eq!(patch.content_type, "application/strategic-merge-patch+json");
    assert!(
        patch.query.contains("fieldManager=twilld"),
        "{}",
        patch.query
    );

    // A restart: same node, the MAC comes back from our annotation, nothing is rewritten.
    let again = KubeStore::connect(&opts(&fake, "n1")).await.unwrap();
    assert_eq!(
        again
            .advertised_macs("198.18.0.1".parse().unwrap())
            .await
            .0
            .as_deref(),
        Some("0a:11:22:33:44:55")
    );
    let held2 = again.acquire(&req).await.unwrap();
    assert_eq!(held2, held);
    assert_eq!(
        fake.patches_to("/api/v1/nodes/n1/status"),
        2,
        "unchanged annotations or condition rewritten"
    );

    // Someone strips our annotations: a renewal puts them back.
    fake.update_node("n1", |n| n["metadata"]["annotations"] = json!({}));
    assert!(matches!(
        again.renew(&held2).await.unwrap(),
        twill_store::RenewOutcome::Renewed { .. }
    ));
    assert_eq!(
        annotation(&fake, "n1", "public-ip").as_deref(),
        Some("198.18.0.1")
    );
}

#[tokio::test]
async fn podcidr_outside_network_is_a_clear_permanent_error() {
    let fake = FakeKube::start_local();
    fake.add_node("n1", Some("10.42.0.0/24"));
    let store = KubeStore::connect(&opts(&fake, "n1")).await.unwrap();
    let err = store
        .acquire(&request("0a:00:00:00:00:01", "198.18.0.1"))
        .await
        .unwrap_err();
    assert!(err.is_permanent(), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("10.42.0.0/24") && msg.contains("10.244.0.0/16"),
        "{msg}"
    );
    assert_eq!(fake.patches_to("/api/v1/nodes/n1/status"), 0);
}

#[tokio::test]
async fn overwrite_and_node_public_ip_annotations_are_honoured() {
    let fake = FakeKube::start_local();
    fake.add_node("n1", Some("10.244.1.0/24"));
    fake.update_node("n1", |n| {
        n["metadata"]["annotations"] = json!({
            format!("{PREFIX}/node-public-ip"): "198.18.0.9",
            format!("{PREFIX}/public-ip-overwrite"): "198.19.9.9",
        })
    });
    let store = KubeStore::connect(&opts(&fake, "n1")).await.unwrap();
    assert_eq!(
        store.node_public_ip().await.unwrap(),
        Some("198.18.0.9".parse().unwrap())
    );
    let held = store
        .acquire(&request("0a:00:00:00:00:01", "198.18.0.9"))
        .await
        .unwrap();
    assert_eq!(held.attrs.public_ip.to_string(), "198.19.9.9");
    assert_eq!(
        annotation(&fake, "n1", "public-ip").as_deref(),
        Some("198.19.9.9")
    );
}

#[tokio::test]
async fn node_name_from_our_pod_and_clear_errors_without_one() {
    let fake = FakeKube::start_local();
    fake.add_pod("kube-twill", "twill-abcde", "n7");
    let mut o = opts(&fake, "");
    o.node_name = None;
    o.pod = Some(("kube-twill".into(), "twill-abcde".into()));
    assert_eq!(KubeStore::connect(&o).await.unwrap().node_name(), "n7");

    o.pod = None;
    let err = KubeStore::connect(&o).await.err().unwrap();
    assert!(
        err.is_permanent() && err.to_string().contains("NODE_NAME"),
        "{err}"
    );

    o.api_url = Some("not a url".into());
    let err = KubeStore::connect(&o).await.err().unwrap();
    assert!(
        err.to_string().contains("--kube-api-url=not a url"),
        "{err}"
    );
}

/// Feeds the store's watch into a peer table, like the daemon does.
struct Watched {
    rx: mpsc::Receiver<Vec<WatchEvent>>,
    table: PeerTable,
    snapshots: usize,
    cancel: CancellationToken,
}

impl Watched {
    fn start(store: &KubeStore) -> Watched {
        let (tx, rx) = mpsc::channel(64);
        let cancel = CancellationToken::new();
        let (s, c) = (store.clone(), cancel.clone());
        tokio::spawn(async move { s.watch(tx, c).await });
        Watched {
            rx,
            table: PeerTable::new(),
            snapshots: 0,
            cancel,
        }
    }

    /// Applies batches until `done` holds of the table (or 20 s pass); returns the peer
    /// events seen on the way.
    async fn until(&mut self, what: &str, done: impl Fn(&PeerTable) -> bool) -> Vec<PeerEvent> {
        let mut seen = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !done(&self.table) {
            let batch = tokio::time::timeout_at(deadline, self.rx.recv())
                .await
                .unwrap_or_else(|_| panic!("timed out waiting for: {what}"))
                .expect("watch ended");
            for ev in batch {
                self.snapshots += matches!(ev, WatchEvent::Snapshot(_)) as usize;
                seen.extend(self.table.apply(ev).events);
            }
        }
        seen
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

fn peer_ips(t: &PeerTable) -> Vec<String> {
    t.iter().map(|(_, a)| a.public_ip.to_string()).collect()
}

#[tokio::test]
async fn nodes_added_changed_deleted_become_peer_events() {
    let fake = FakeKube::start_local();
    fake.add_node("n1", Some("10.244.1.0/24"));
    fake.put_flannel_node("n2", "10.244.2.0/24", "198.18.0.2", "0a:00:00:00:00:02");
    fake.add_node("plain", Some("10.244.9.0/24")); // no annotations: not a peer
    let store = KubeStore::connect(&opts(&fake, "n1")).await.unwrap();
    let mut w = Watched::start(&store);
    w.until("n2 listed", |t| t.len() == 1).await;
    assert_eq!(w.snapshots, 1);

    fake.put_flannel_node("n3", "10.244.3.0/24", "198.18.0.3", "0a:00:00:00:00:03");
    let ev = w.until("n3 added", |t| t.len() == 2).await;
    assert!(matches!(&ev[..], [PeerEvent::Added(l)] if l.key.to_string() == "10.244.3.0-24"));

    fake.put_flannel_node("n3", "10.244.3.0/24", "198.18.0.3", "0a:00:00:00:00:33");
    let ev = w
        .until("n3 MAC changed", |t| {
            t.iter()
                .any(|(_, a)| a.vxlan_data().unwrap().vtep_mac.ends_with(":33"))
        })
        .await;
    assert!(matches!(&ev[..], [PeerEvent::Changed { .. }]), "{ev:?}");

    // A status-only update (heartbeat) is not a peer event.
    fake.update_node("n2", |n| {
        n["status"]["conditions"] = json!([{"type": "Ready", "status": "True"}])
    });
    fake.delete_node("n3");
    let ev = w.until("n3 deleted", |t| t.len() == 1).await;
    assert!(
        matches!(&ev[..], [PeerEvent::Removed(l)] if l.attrs.public_ip.to_string() == "198.18.0.3"),
        "{ev:?}"
    );
    assert_eq!(peer_ips(&w.table), ["198.18.0.2"]);
}

#[tokio::test]
async fn broken_watch_with_a_node_deleted_meanwhile_and_410_gone_relists() {
    let fake = FakeKube::start_local();
    fake.add_node("n1", Some("10.244.1.0/24"));
    fake.put_flannel_node("n2", "10.244.2.0/24", "198.18.0.2", "0a:00:00:00:00:02");
    fake.put_flannel_node("n3", "10.244.3.0/24", "198.18.0.3", "0a:00:00:00:00:03");
    let store = KubeStore::connect(&opts(&fake, "n1")).await.unwrap();
    let mut w = Watched::start(&store);
    w.until("both peers listed", |t| t.len() == 2).await;

    // The watch breaks; while it can't reconnect, n3 is deleted and history compacted, so
    // the resumed watch gets 410 Gone and the watcher must re-list.
    fake.refuse_watches(true);
    fake.break_watches();
    tokio::time::sleep(Duration::from_millis(300)).await;
    fake.delete_node("n3");
    fake.put_flannel_node("n4", "10.244.4.0/24", "198.18.0.4", "0a:00:00:00:00:04");
    fake.compact();
    fake.refuse_watches(false);
    let ev = w
        .until("n3 gone and n4 present after the re-list", |t| {
            peer_ips(t) == ["198.18.0.2", "198.18.0.4"]
        })
        .await;
    assert_eq!(w.snapshots, 2, "expected exactly one re-list");
    assert!(ev.iter().any(
        |e| matches!(e, PeerEvent::Removed(l) if l.attrs.public_ip.to_string() == "198.18.0.3")
    ));
    assert!(store.error_count() >= 1, "the broken watch was not counted");
    let relisted = fake
        .requests()
        .iter()
        .filter(|r| {
            r.method == "GET" && r.path == "/api/v1/nodes" && !r.query.contains("watch=true")
        })
        .count();
    assert_eq!(relisted, 2);

    // A plain break (no compaction) resumes without a re-list and loses nothing.
    fake.break_watches();
    fake.delete_node("n2");
    w.until("n2 removed after a resumed watch", |t| t.len() == 1)
        .await;
    assert_eq!(w.snapshots, 2, "a resumable break must not re-list");
}

#[tokio::test]
async fn kubeconfig_file_and_no_condition_when_disabled() {
    let fake = FakeKube::start_local();
    fake.add_node("n1", Some("10.244.1.0/24"));
    let dir = tempfile::tempdir().unwrap();
    let kc = dir.path().join("kubeconfig");
    std::fs::write(
        &kc,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: twill\n\
             current-context: fake\nusers:\n- name: twill\n  user:\n    token: not-checked-by-the-fake\n",
            fake.url()
        ),
    )
    .unwrap();
    let mut o = opts(&fake, "n1");
    o.api_url = None;
    o.kubeconfig = Some(kc.clone());
    o.set_network_unavailable = false;
    let store = KubeStore::connect(&o).await.unwrap();
    store
        .acquire(&request("0a:00:00:00:00:01", "198.18.0.1"))
        .await
        .unwrap();
    assert_eq!(
        fake.patches_to("/api/v1/nodes/n1/status"),
        1,
        "annotations only"
    );
    assert!(
        fake.node("n1").unwrap()["status"]["conditions"].is_null(),
        "--set-node-network-unavailable=false"
    );

    o.kubeconfig = Some(dir.path().join("missing"));
    let err = KubeStore::connect(&o).await.err().unwrap();
    assert!(err.to_string().contains("--kubeconfig-file="), "{err}");
}

/// A prefix with a path part names keys as flanneld does (`<domain>/<path>-<name>`), and
/// the whole store works under flannel's ClusterRole.
#[tokio::test]
async fn path_prefix_keys_under_flannels_role() {
    let fake = FakeKube::start_local();
    fake.enforce_rbac(twill_testutil::FLANNEL_CLUSTER_ROLE);
    fake.add_node("n1", Some("10.244.7.0/24"));
    let mut o = opts(&fake, "n1");
    o.annotation_prefix = "example.com/overlay".into();
    let store = KubeStore::connect(&o).await.unwrap();
    store
        .acquire(&request("0a:00:00:00:00:07", "198.18.0.7"))
        .await
        .unwrap();
    let ann = fake.node("n1").unwrap()["metadata"]["annotations"].clone();
    assert_eq!(ann["example.com/overlay-public-ip"], "198.18.0.7", "{ann}");
    assert_eq!(
        ann["example.com/overlay-kube-subnet-manager"], "true",
        "{ann}"
    );
    assert!(fake.forbidden().is_empty(), "{:?}", fake.forbidden());

    o.annotation_prefix = "a/b/c".into();
    let err = KubeStore::connect(&o).await.err().unwrap();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("--kube-annotation-prefix") && msg.contains("a/b/c"),
        "{msg}"
    );
}

/// A net-conf.json without Network takes the cluster's: kubeadm's podSubnet when its
/// ConfigMap is readable, else the prefix covering the nodes' podCIDRs (also what happens
/// under flannel's RBAC, which cannot read the ConfigMap).
#[tokio::test]
async fn the_pod_network_is_detected_from_kubeadm_else_from_the_nodes() {
    let fake = FakeKube::start_local();
    fake.add_node("n1", Some("10.244.1.0/24"));
    fake.add_node("n2", Some("10.244.130.0/24"));
    let store = KubeStore::connect(&opts(&fake, "n1")).await.unwrap();
    let (nets, from) = store.detect_pod_networks().await.unwrap();
    assert_eq!(nets, ["10.244.0.0/16".parse().unwrap()]);
    assert_eq!(from, twill_kube::Detected::NodePodCidrs);

    fake.put_configmap(
        "kube-system",
        "kubeadm-config",
        json!({"ClusterConfiguration": "apiVersion: kubeadm.k8s.io/v1beta3\nkind: ClusterConfiguration\nnetworking:\n  podSubnet: 10.240.0.0/12\n  serviceSubnet: 10.96.0.0/12\n"}),
    );
    let (nets, from) = store.detect_pod_networks().await.unwrap();
    assert_eq!(nets, ["10.240.0.0/12".parse().unwrap()]);
    assert_eq!(from, twill_kube::Detected::KubeadmConfig);

    fake.enforce_rbac(twill_testutil::FLANNEL_CLUSTER_ROLE);
    let (nets, from) = store.detect_pod_networks().await.unwrap();
    assert_eq!(nets, ["10.244.0.0/16".parse().unwrap()]);
    assert_eq!(from, twill_kube::Detected::NodePodCidrs);
    assert_eq!(
        fake.forbidden(),
        [("configmaps".to_string(), "get".to_string())]
    );

    // Nothing to go by: the caller waits, told what to set.
    let empty = FakeKube::start_local();
    empty.add_node("n1", None);
    let store = KubeStore::connect(&opts(&empty, "n1")).await.unwrap();
    let err = store.detect_pod_networks().await.unwrap_err();
    assert!(matches!(err, StoreError::Waiting(_)), "{err:?}");
    assert!(err.to_string().contains("--allocate-node-cidrs"), "{err}");
}

/// Names in the events up to and including the next `InitDone`, or the next applied
/// object's name alone when the stream is past its listing.
async fn next_listing<S>(events: &mut S) -> Vec<String>
where
    S: futures::Stream<
            Item = kube::runtime::watcher::Result<
                kube::runtime::watcher::Event<k8s_openapi::api::core::v1::Node>,
            >,
        > + Unpin,
{
    use futures::StreamExt;
    use kube::runtime::watcher::Event;
    let mut names = Vec::new();
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(5), events.next())
            .await
            .expect("an event within 5 s")
            .expect("the stream goes on")
            .expect("no watch error");
        match ev {
            Event::Init => names.clear(),
            Event::InitApply(n) => names.push(n.metadata.name.unwrap_or_default()),
            Event::InitDone => return names,
            Event::Apply(n) | Event::Delete(n) => return vec![n.metadata.name.unwrap_or_default()],
        }
    }
}

#[tokio::test]
async fn a_replaced_client_lists_and_watches_again_on_the_new_one() {
    use k8s_openapi::api::core::v1::Node;
    use kube::Api;
    let (old, new) = (FakeKube::start_local(), FakeKube::start_local());
    old.add_node("on-the-old", Some("10.244.1.0/24"));
    new.add_node("on-the-new", Some("10.244.2.0/24"));
    let clients =
        twill_kube::Clients::new(twill_kube::connect_client(&opts(&old, "n1")).await.unwrap());
    let mut events = Box::pin(twill_kube::rewatching(
        &clients,
        Api::<Node>::all,
        Default::default(),
    ));
    assert_eq!(next_listing(&mut events).await, ["on-the-old"]);

    clients.replace(twill_kube::connect_client(&opts(&new, "n1")).await.unwrap());
    assert_eq!(
        next_listing(&mut events).await,
        ["on-the-new"],
        "a fresh listing from the new client"
    );
    old.add_node("late-on-the-old", None);
    new.add_node("late-on-the-new", None);
    assert_eq!(
        next_listing(&mut events).await,
        ["late-on-the-new"],
        "the old watch is gone, the new one goes on"
    );
}
