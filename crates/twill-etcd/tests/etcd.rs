//! The etcd store against a real etcd server (started per test on 127.0.0.1 with random
//! ports and a temporary data dir; killed when the test ends, pass or fail).

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use twill_config::NetConf;
use twill_etcd::{EtcdOptions, EtcdStore};
use twill_store::{
    AcquireRequest, AllocError, Expiry, LeaseAttrs, LeaseKey, PeerTable, PlanSource, RenewOutcome,
    StoreError,
};
use twill_testutil::{Etcd, TcpProxy, TlsFiles};

const PREFIX: &str = "/coreos.com/network";

fn opts(endpoint: String) -> EtcdOptions {
    EtcdOptions {
        endpoints: vec![endpoint],
        prefix: PREFIX.into(),
        ..Default::default()
    }
}

fn conf(json: &str) -> NetConf {
    NetConf::parse(json).unwrap().0
}

fn req(c: &NetConf, ip: &str) -> AcquireRequest {
    AcquireRequest {
        conf: c.clone(),
        attrs: LeaseAttrs::vxlan(ip.parse().unwrap(), 1, "0a:00:00:00:00:01"),
        previous: LeaseKey { v4: None, v6: None },
        ttl: Duration::from_secs(3600),
    }
}

fn foreign(etcd: &Etcd, subnet: &str, ip: &str, ttl: Option<u32>) {
    let value = LeaseAttrs::vxlan(ip.parse().unwrap(), 1, "0a:00:00:00:00:99").to_json();
    let key = format!("{PREFIX}/subnets/{subnet}");
    match ttl {
        Some(t) => {
            let grant = etcd.ctl(&["lease", "grant", &t.to_string()]);
            let id = grant.split_whitespace().nth(1).unwrap().to_string();
            etcd.ctl(&["put", &key, &value, &format!("--lease={id}")]);
        }
        None => {
            etcd.ctl(&["put", &key, &value]);
        }
    }
}

/// A peer table fed by the store's watch, shared with the test.
fn start_watch(
    store: &EtcdStore,
    own: Option<(LeaseKey, LeaseAttrs)>,
) -> (Arc<Mutex<PeerTable>>, CancellationToken) {
    let table = Arc::new(Mutex::new(PeerTable::new()));
    if let Some((k, a)) = own {
        table.lock().unwrap().set_own(k, a);
    }
    let cancel = CancellationToken::new();
    let (tx, mut rx) = mpsc::channel(16);
    let s = store.clone();
    let c = cancel.clone();
    tokio::spawn(async move { s.watch(tx, c).await });
    let t = table.clone();
    tokio::spawn(async move {
        while let Some(batch) = rx.recv().await {
            let mut t = t.lock().unwrap();
            for ev in batch {
                t.apply(ev);
            }
        }
    });
    (table, cancel)
}

fn table_view(t: &Arc<Mutex<PeerTable>>) -> BTreeMap<String, String> {
    t.lock()
        .unwrap()
        .iter()
        .map(|(k, a)| (k.to_string(), a.public_ip.to_string()))
        .collect()
}

async fn etcd_view(store: &EtcdStore, own: Option<&LeaseKey>) -> BTreeMap<String, String> {
    let (all, _) = store.list().await.unwrap();
    all.into_iter()
        .filter(|l| Some(&l.key) != own)
        .map(|l| (l.key.to_string(), l.attrs.unwrap().public_ip.to_string()))
        .collect()
}

async fn eventually<F, Fut>(secs: u64, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while tokio::time::Instant::now() < deadline {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out after {secs}s: {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_acquirers_get_distinct_subnets() {
    let etcd = Etcd::start();
    // 63 leasable /24s for 50 nodes: collisions are frequent and must be retried, never fatal.
    let c = conf(r#"{"Network":"10.50.0.0/18"}"#);
    let mut tasks = Vec::new();
    for i in 0..50 {
        let (o, c) = (opts(etcd.endpoint()), c.clone());
        tasks.push(tokio::spawn(async move {
            let store = EtcdStore::connect(&o).await.unwrap();
            store
                .acquire(&req(&c, &format!("198.18.1.{}", i + 1)))
                .await
                .unwrap()
        }));
    }
    let mut subnets = HashSet::new();
    for t in tasks {
        let held = t.await.unwrap();
        assert!(c.fits(held.key.v4.as_ref(), None));
        assert!(
            subnets.insert(held.key),
            "subnet {} handed out twice",
            held.key
        );
    }
    let store = EtcdStore::connect(&opts(etcd.endpoint())).await.unwrap();
    let (all, _) = store.list().await.unwrap();
    assert_eq!(all.len(), 50);
    let ips: HashSet<_> = all
        .iter()
        .map(|l| l.attrs.as_ref().unwrap().public_ip)
        .collect();
    assert_eq!(ips.len(), 50, "no lease was overwritten by another node");
    // Lost races revoke their fresh etcd lease: exactly one lease per key remains.
    let leases = store.client().leases().await.unwrap();
    assert_eq!(leases.leases().len(), 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_json_and_key_layout_match_flannel() {
    let etcd = Etcd::start();
    let c = conf(r#"{"Network":"10.244.0.0/16"}"#);
    let store = EtcdStore::connect(&opts(etcd.endpoint())).await.unwrap();
    let held = store.acquire(&req(&c, "198.18.0.3")).await.unwrap();
    let out = etcd.ctl(&["get", "--prefix", &format!("{PREFIX}/subnets/")]);
    let mut lines = out.lines();
    let key = lines.next().unwrap();
    assert_eq!(key, format!("{PREFIX}/subnets/{}", held.key));
    assert!(key.ends_with("-24"));
    assert_eq!(
        lines.next().unwrap(),
        r#"{"PublicIP":"198.18.0.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0a:00:00:00:00:01"}}"#
    );
    let ttl = store
        .client()
        .lease_time_to_live(store.lease_id(&held.key).expect("a lease id"), None)
        .await
        .unwrap();
    assert!(
        ttl.granted_ttl() == 3600 && ttl.ttl() > 3500,
        "{}",
        ttl.ttl()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_reuses_lease_by_public_ip_and_by_previous_subnet() {
    let etcd = Etcd::start();
    let c = conf(r#"{"Network":"10.244.0.0/16"}"#);
    let store = EtcdStore::connect(&opts(etcd.endpoint())).await.unwrap();
    let first = store.acquire(&req(&c, "198.18.0.3")).await.unwrap();
    // Same PublicIP, new process, new MAC: same subnet, value updated, old lease revoked.
    let mut r = req(&c, "198.18.0.3");
    r.attrs = LeaseAttrs::vxlan("198.18.0.3".parse().unwrap(), 1, "0a:00:00:00:00:02");
    let again = store.acquire(&r).await.unwrap();
    assert_eq!(again.key, first.key);
    assert_eq!(again.source, PlanSource::OwnLease);
    assert_eq!(
        store.client().leases().await.unwrap().leases().len(),
        1,
        "old etcd lease revoked"
    );
    let (all, _) = store.list().await.unwrap();
    assert_eq!(
        all[0]
            .attrs
            .as_ref()
            .unwrap()
            .vxlan_data()
            .unwrap()
            .vtep_mac,
        "0a:00:00:00:00:02"
    );

    // New PublicIP (node re-addressed) but the subnet.env subnet is free: keep it.
    assert_eq!(store.release_key(&again.key).await.unwrap(), "released");
    let mut r = req(&c, "198.18.0.33");
    r.previous = first.key;
    let moved = store.acquire(&r).await.unwrap();
    assert_eq!(moved.key, first.key);
    assert_eq!(moved.source, PlanSource::PreviousSubnet);

    // The previous subnet taken by someone else: never overwritten.
    let mut r = req(&c, "198.18.0.44");
    r.previous = first.key;
    let other = store.acquire(&r).await.unwrap();
    assert_ne!(other.key, first.key);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_keeps_one_etcd_lease_and_detects_loss() {
    let etcd = Etcd::start();
    let c = conf(r#"{"Network":"10.244.0.0/16"}"#);
    let store = EtcdStore::connect(&opts(etcd.endpoint())).await.unwrap();
    let mut r = req(&c, "198.18.0.3");
    r.ttl = Duration::from_secs(30);
    let held = store.acquire(&r).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for _ in 0..5 {
        match store.renew(&held).await.unwrap() {
            RenewOutcome::Renewed(Expiry::At { ttl, .. }) => {
                assert_eq!(ttl, Duration::from_secs(30))
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        store.client().leases().await.unwrap().leases().len(),
        1,
        "renewal must not grant new leases"
    );
    // Someone deletes our key: the next renewal says so instead of pretending.
    etcd.ctl(&["del", &store.lease_key(&held.key)]);
    assert_eq!(store.renew(&held).await.unwrap(), RenewOutcome::Lost);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reservations_are_honoured_and_never_taken() {
    let etcd = Etcd::start();
    // Three leasable subnets; two reserved for other nodes.
    let c = conf(r#"{"Network":"10.9.0.0/22"}"#);
    foreign(&etcd, "10.9.1.0-24", "198.18.0.101", None);
    foreign(&etcd, "10.9.3.0-24", "198.18.0.103", None);
    let store = EtcdStore::connect(&opts(etcd.endpoint())).await.unwrap();
    let held = store.acquire(&req(&c, "198.18.0.5")).await.unwrap();
    assert_eq!(held.key.to_string(), "10.9.2.0-24");
    let e = store.acquire(&req(&c, "198.18.0.6")).await.unwrap_err();
    assert!(
        matches!(
            e,
            StoreError::Alloc(AllocError::Exhausted { leases: 3, .. })
        ),
        "{e}"
    );
    let msg = e.to_string();
    assert!(
        msg.contains("10.9.0.0/22")
            && msg.contains("SubnetMin 10.9.1.0")
            && msg.contains("SubnetMax 10.9.3.0"),
        "{msg}"
    );
    // The reserved node gets its reservation, which keeps having no TTL.
    let mine = store.acquire(&req(&c, "198.18.0.101")).await.unwrap();
    assert_eq!(mine.key.to_string(), "10.9.1.0-24");
    assert_eq!(mine.expiry, Expiry::Never);
    assert_eq!(store.lease_id(&mine.key), Some(0));
    let (all, _) = store.list().await.unwrap();
    let res = all.iter().find(|l| l.key == mine.key).unwrap();
    assert!(res.is_reservation());
    assert_eq!(
        res.attrs.as_ref().unwrap().vxlan_data().unwrap().vtep_mac,
        "0a:00:00:00:00:01"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_lease_expiring_is_a_removal_and_own_lease_is_not_a_peer() {
    let etcd = Etcd::start();
    let c = conf(r#"{"Network":"10.244.0.0/16"}"#);
    let store = EtcdStore::connect(&opts(etcd.endpoint())).await.unwrap();
    // The peers first: acquiring picks a free subnet at random, and one of these keys
    // written over ours would rightly make our key a peer's (two keys of 255: about one
    // run in 128 failed so).
    foreign(&etcd, "10.244.200.0-24", "198.18.0.200", Some(2));
    foreign(&etcd, "10.244.201.0-24", "198.18.0.201", Some(3600));
    let held = store.acquire(&req(&c, "198.18.0.3")).await.unwrap();
    let (table, cancel) = start_watch(&store, Some((held.key, held.attrs.clone())));
    eventually(5, "both peers seen", || async {
        table.lock().unwrap().len() == 2
    })
    .await;
    assert!(table.lock().unwrap().get(&held.key).is_none());
    eventually(15, "expired lease removed", || async {
        let v = table_view(&table);
        v.len() == 1 && v.contains_key("10.244.201.0-24")
    })
    .await;
    cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_killed_and_restarted_while_watching_converges() {
    let mut etcd = Etcd::start();
    let store = EtcdStore::connect(&opts(etcd.endpoint())).await.unwrap();
    foreign(&etcd, "10.244.1.0-24", "198.18.0.1", Some(3600));
    foreign(&etcd, "10.244.2.0-24", "198.18.0.2", Some(3600));
    let (table, cancel) = start_watch(&store, None);
    eventually(5, "initial peers", || async {
        table.lock().unwrap().len() == 2
    })
    .await;

    etcd.kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    etcd.restart();
    etcd.ctl(&["del", &format!("{PREFIX}/subnets/10.244.1.0-24")]);
    foreign(&etcd, "10.244.3.0-24", "198.18.0.3", Some(3600));

    let s = store.clone();
    eventually(20, "peer table equals etcd after restart", || {
        let (s, t) = (s.clone(), table.clone());
        async move { table_view(&t) == etcd_view(&s, None).await }
    })
    .await;
    assert_eq!(
        table_view(&table).keys().cloned().collect::<Vec<_>>(),
        ["10.244.2.0-24", "10.244.3.0-24"]
    );
    cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_past_our_revision_resyncs_without_stale_entries() {
    let etcd = Etcd::start();
    let proxy = TcpProxy::start(format!("127.0.0.1:{}", etcd.client_port()).parse().unwrap()).await;
    let watched = EtcdStore::connect(&opts(format!("http://{}", proxy.addr)))
        .await
        .unwrap();
    let direct = EtcdStore::connect(&opts(etcd.endpoint())).await.unwrap();
    foreign(&etcd, "10.244.1.0-24", "198.18.0.1", Some(3600));
    foreign(&etcd, "10.244.2.0-24", "198.18.0.2", Some(3600));
    let (table, cancel) = start_watch(&watched, None);
    eventually(5, "initial peers", || async {
        table.lock().unwrap().len() == 2
    })
    .await;

    // Partition the watcher, change things behind its back, and compact the history it
    // would need to catch up from.
    proxy.cut();
    etcd.ctl(&["del", &format!("{PREFIX}/subnets/10.244.1.0-24")]);
    foreign(&etcd, "10.244.3.0-24", "198.18.0.3", Some(3600));
    foreign(&etcd, "10.244.2.0-24", "198.18.0.22", Some(3600));
    let (_, rev) = direct.list().await.unwrap();
    direct.client().compact(rev, None).await.unwrap();
    proxy.heal();

    eventually(20, "peer table equals etcd after compaction", || {
        let (s, t) = (direct.clone(), table.clone());
        async move { table_view(&t) == etcd_view(&s, None).await }
    })
    .await;
    assert_eq!(
        table_view(&table).get("10.244.2.0-24").unwrap(),
        "198.18.0.22"
    );
    cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_etcd_with_client_certificate() {
    let tls = TlsFiles::generate();
    let etcd = Etcd::start_tls(&tls);
    let mut o = opts(etcd.endpoint());
    o.ca_file = Some(tls.path("ca.crt"));
    o.cert_file = Some(tls.path("client.crt"));
    o.key_file = Some(tls.path("client.key"));
    let store = EtcdStore::connect(&o).await.unwrap();
    let c = conf(r#"{"Network":"10.244.0.0/16"}"#);
    let held = store.acquire(&req(&c, "198.18.0.3")).await.unwrap();
    assert!(c.fits(held.key.v4.as_ref(), None));

    // Without the client certificate the server refuses us.
    let mut no_cert = opts(etcd.endpoint());
    no_cert.ca_file = Some(tls.path("ca.crt"));
    let refused = async {
        let s = EtcdStore::connect(&no_cert).await?;
        s.list().await
    }
    .await;
    assert!(
        refused.is_err(),
        "a client without a certificate must be refused"
    );

    // Half a key pair and plain http with TLS files are configuration errors, named.
    let mut half = o.clone();
    half.key_file = None;
    let e = EtcdStore::connect(&half).await.err().unwrap().to_string();
    assert!(
        e.contains("--etcd-certfile") && e.contains("--etcd-keyfile"),
        "{e}"
    );
    let mut plain = o.clone();
    plain.endpoints = vec![etcd.endpoint().replace("https", "http")];
    let e = EtcdStore::connect(&plain).await.err().unwrap().to_string();
    assert!(e.contains("https://"), "{e}");
    let mut missing = o.clone();
    missing.ca_file = Some("/nonexistent/ca.pem".into());
    let e = EtcdStore::connect(&missing)
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("--etcd-cafile /nonexistent/ca.pem"), "{e}");
}
