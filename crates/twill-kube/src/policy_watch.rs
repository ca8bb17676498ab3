//! What NetworkPolicy enforcement reads (`--network-policy`): every pod, namespace and
//! NetworkPolicy, each followed by a kube-rs watcher and kept as the model's parts
//! (`twill_policy`), not as API objects, so 5 000 pods cost their addresses and labels.
//! Each (re)list replaces its part whole, so what was deleted during a gap goes.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::warn;
use twill_policy::{Cluster, Labels, PolicyId};

use crate::clients::{rewatching, Clients};

/// What `--network-policy` adds to [`crate::API_ACCESS`], as (resource, verb).
pub const POLICY_ACCESS: &[(&str, &str)] = &[
    ("pods", "list"),
    ("pods", "watch"),
    ("namespaces", "list"),
    ("namespaces", "watch"),
    ("networkpolicies", "list"),
    ("networkpolicies", "watch"),
];

/// One object as the model keeps it.
enum Part {
    Pod(twill_policy::Pod),
    Namespace(String, Labels),
    Policy(twill_policy::Policy),
}

#[derive(Clone, Copy)]
enum Kind {
    Pods = 1,
    Namespaces = 2,
    Policies = 4,
}

const ALL_LISTED: u8 = Kind::Pods as u8 | Kind::Namespaces as u8 | Kind::Policies as u8;

impl Part {
    fn insert(self, c: &mut Cluster) {
        match self {
            Part::Pod(p) => {
                c.pods.insert((p.ns.clone(), p.name.clone()), p);
            }
            Part::Namespace(n, l) => {
                c.namespaces.insert(n, l);
            }
            Part::Policy(p) => {
                c.policies.insert(p.id.clone(), p);
            }
        }
    }

    fn remove(self, c: &mut Cluster) {
        match self {
            Part::Pod(p) => {
                c.pods.remove(&(p.ns, p.name));
            }
            Part::Namespace(n, _) => {
                c.namespaces.remove(&n);
            }
            Part::Policy(p) => {
                c.policies.remove(&p.id);
            }
        }
    }
}

fn clear(kind: Kind, c: &mut Cluster) {
    match kind {
        Kind::Pods => c.pods = BTreeMap::new(),
        Kind::Namespaces => c.namespaces = BTreeMap::new(),
        Kind::Policies => c.policies = BTreeMap::<PolicyId, _>::new(),
    }
}

/// The model as the watchers keep it. `changed` ticks on every change; nothing should be
/// enforced before [`PolicyFeed::listed`] (a policy seen before the pods it allows would
/// cut them off).
///
/// Readers take a [`PolicyFeed::snapshot`] and work on it off the lock (rendering 1 000
/// policies over 5 000 pods takes tens of milliseconds, which under the lock would hold up
/// every watcher's worker thread and with them the node loop sharing the runtime); a
/// change while a snapshot is out copies the model once (copy on write).
#[derive(Clone)]
pub struct PolicyFeed {
    cluster: Arc<Mutex<Arc<Cluster>>>,
    changed: watch::Sender<u64>,
    listed: Arc<AtomicU8>,
}

impl PolicyFeed {
    /// Starts the three watchers on `clients` (each begun again on a new client); they
    /// stop with `cancel`.
    pub fn start(clients: &Clients, cancel: CancellationToken) -> Self {
        let feed = PolicyFeed::empty();
        let config = || watcher::Config::default().page_size(500);
        let pods = rewatching(clients, Api::<Pod>::all, config());
        let nss = rewatching(clients, Api::<Namespace>::all, config());
        let nps = rewatching(clients, Api::<NetworkPolicy>::all, config());
        tokio::spawn(feed.clone().follow(pods, Kind::Pods, cancel.clone(), |p| {
            Part::Pod(twill_policy::pod_from_k8s(p))
        }));
        tokio::spawn(
            feed.clone()
                .follow(nss, Kind::Namespaces, cancel.clone(), |n| {
                    let (name, labels) = twill_policy::namespace_labels(n);
                    Part::Namespace(name, labels)
                }),
        );
        tokio::spawn(feed.clone().follow(nps, Kind::Policies, cancel, |p| {
            Part::Policy(twill_policy::policy_from_k8s(p))
        }));
        feed
    }

    fn empty() -> Self {
        PolicyFeed {
            cluster: Arc::default(),
            changed: watch::channel(0).0,
            listed: Arc::default(),
        }
    }

    /// Ticks on every change of the model.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Whether all three have been listed once.
    pub fn listed(&self) -> bool {
        self.listed.load(Ordering::SeqCst) == ALL_LISTED
    }

    /// The model as it is now, to read off the lock.
    pub fn snapshot(&self) -> Arc<Cluster> {
        self.cluster
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn change(&self, f: impl FnOnce(&mut Cluster)) {
        f(Arc::make_mut(
            &mut self.cluster.lock().unwrap_or_else(|e| e.into_inner()),
        ));
        self.changed.send_modify(|n| *n += 1);
    }

    async fn follow<K>(
        self,
        stream: impl Stream<Item = watcher::Result<Event<K>>>,
        kind: Kind,
        cancel: CancellationToken,
        part: fn(&K) -> Part,
    ) {
        futures::pin_mut!(stream);
        let mut listing: Vec<Part> = Vec::new();
        loop {
            let ev = tokio::select! {
                _ = cancel.cancelled() => return,
                ev = stream.next() => ev,
            };
            match ev {
                None => return,
                Some(Err(e)) => {
                    warn!(
                        "network policy: {} watch: {e}; the watcher retries",
                        name(kind)
                    );
                }
                Some(Ok(Event::Init)) => listing.clear(),
                Some(Ok(Event::InitApply(o))) => listing.push(part(&o)),
                Some(Ok(Event::InitDone)) => {
                    let parts = std::mem::take(&mut listing);
                    self.change(|c| {
                        clear(kind, c);
                        for p in parts {
                            p.insert(c);
                        }
                    });
                    self.listed.fetch_or(kind as u8, Ordering::SeqCst);
                    // A tick after the flag, so a waiter that saw the last part's
                    // change also sees every part listed.
                    self.changed.send_modify(|n| *n += 1);
                }
                Some(Ok(Event::Apply(o))) => self.change(|c| part(&o).insert(c)),
                Some(Ok(Event::Delete(o))) => self.change(|c| part(&o).remove(c)),
            }
        }
    }
}

fn name(kind: Kind) -> &'static str {
    match kind {
        Kind::Pods => "pod",
        Kind::Namespaces => "namespace",
        Kind::Policies => "networkpolicy",
    }
}

/// The model as the API holds it now, listed once (`twilld policy explain`), through the
/// same conversions the watchers use.
pub async fn list_cluster(client: Client) -> Result<Cluster, kube::Error> {
    use kube::api::ListParams;
    let lp = ListParams::default();
    let mut c = Cluster::default();
    for p in Api::<Pod>::all(client.clone()).list(&lp).await? {
        Part::Pod(twill_policy::pod_from_k8s(&p)).insert(&mut c);
    }
    for n in Api::<Namespace>::all(client.clone()).list(&lp).await? {
        let (name, labels) = twill_policy::namespace_labels(&n);
        c.namespaces.insert(name, labels);
    }
    for p in Api::<NetworkPolicy>::all(client).list(&lp).await? {
        Part::Policy(twill_policy::policy_from_k8s(&p)).insert(&mut c);
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_stays_as_taken_while_the_model_changes() {
        let feed = PolicyFeed::empty();
        let ns = |n: &str| Part::Namespace(n.into(), Labels::default());
        feed.change(|c| ns("x").insert(c));
        let before = feed.snapshot();
        // Nothing changed since: the same model, not a copy.
        assert!(Arc::ptr_eq(&before, &feed.snapshot()));
        feed.change(|c| ns("y").insert(c));
        assert_eq!(before.namespaces.len(), 1, "the snapshot kept its model");
        assert_eq!(feed.snapshot().namespaces.len(), 2);
        assert_eq!(*feed.subscribe().borrow(), 2, "a tick per change");
    }
}
