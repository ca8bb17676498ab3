//! The etcd v3 store: flannel's keys, written with compare-and-swap transactions.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Identity, KeyValue,
    PutOptions, TlsOptions, Txn, TxnOp, WatchOptions,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use twill_store::{
    AcquireRequest, Expiry, HeldLease, LeaseAttrs, LeaseKey, Plan, PlanSource, RenewOutcome,
    StoreError, StoredLease, SubnetManager, WatchEvent,
};

/// Every unary call gets this long; a watch is bounded by HTTP/2 keep-alive instead.
const RPC_TIMEOUT: Duration = Duration::from_secs(10);
/// Lost CAS races tolerated in one acquisition before giving up (each loss excludes that
/// subnet, so this only trips under pathological contention).
const MAX_ATTEMPTS: usize = 32;

#[derive(Debug, Clone, Default)]
pub struct EtcdOptions {
    pub endpoints: Vec<String>,
    pub prefix: String,
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub username: Option<String>,
    pub password: Option<String>,
}

/// The client's error, kept as the source under the store's name.
fn etcd_err(e: etcd_client::Error) -> StoreError {
    StoreError::Backend {
        store: "etcd",
        op: None,
        source: Box::new(e),
    }
}

async fn rpc<T>(
    fut: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(RPC_TIMEOUT, fut).await {
        Ok(r) => r.map_err(etcd_err),
        Err(_) => Err(StoreError::Timeout {
            store: "etcd",
            after: RPC_TIMEOUT,
        }),
    }
}

#[derive(Clone)]
pub struct EtcdStore {
    /// Shared by every copy: `reconnect` in one moves them all, the watch included.
    clients: twill_store::Shared<Client>,
    /// What `client` was made from, to make another (`reconnect`).
    opts: Arc<EtcdOptions>,
    prefix: String,
    /// Watch breaks and failed lists since start, for the daemon's metrics.
    errors: Arc<std::sync::atomic::AtomicU64>,
    /// The etcd lease behind each key we hold (0: a reservation): etcd's handle, which
    /// renewal needs and nothing outside this backend should see.
    held: Arc<Mutex<HashMap<LeaseKey, i64>>>,
}

impl EtcdStore {
    pub async fn connect(opts: &EtcdOptions) -> Result<Self, StoreError> {
        let mut co = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            // Notices a dead server on an idle watch stream within seconds.
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(5))
            .with_keep_alive_while_idle(true);
        if let (Some(u), p) = (&opts.username, &opts.password) {
            co = co.with_user(u.clone(), p.clone().unwrap_or_default());
        }
        let read = |flag: &'static str, path: &PathBuf| {
            std::fs::read(path).map_err(|err| StoreError::File {
                flag,
                path: path.clone(),
                err,
            })
        };
        let tls = match (&opts.cert_file, &opts.key_file) {
            (Some(c), Some(k)) => {
                let identity =
                    Identity::from_pem(read("--etcd-certfile", c)?, read("--etcd-keyfile", k)?);
                Some(TlsOptions::new().identity(identity))
            }
            (Some(_), None) | (None, Some(_)) => {
                return Err(StoreError::Invalid {
                    setting: "--etcd-certfile, --etcd-keyfile".into(),
                    source: "must be given together".into(),
                })
            }
            (None, None) => opts.ca_file.as_ref().map(|_| TlsOptions::new()),
        };
        let tls = match (tls, &opts.ca_file) {
            (Some(t), Some(ca)) => Some(t.ca_certificate(etcd_client::Certificate::from_pem(
                read("--etcd-cafile", ca)?,
            ))),
            (t, _) => t,
        };
        if let Some(t) = tls {
            if let Some(e) = opts.endpoints.iter().find(|e| e.starts_with("http://")) {
                return Err(StoreError::Invalid {
                    setting: format!("--etcd-endpoints {e}"),
                    source: "TLS files were given, so endpoints must be https://".into(),
                });
            }
            co = co.with_tls(t);
        } else if opts.endpoints.iter().any(|e| !e.starts_with("https://")) {
            warn!("talking to etcd over plain HTTP; pass --etcd-certfile/--etcd-keyfile/--etcd-cafile for TLS");
        }
        let client = rpc(Client::connect(&opts.endpoints, Some(co))).await?;
        Ok(EtcdStore {
            clients: twill_store::Shared::new(client),
            opts: Arc::new(opts.clone()),
            prefix: opts.prefix.trim_end_matches('/').to_string(),
            errors: Default::default(),
            held: Default::default(),
        })
    }

    /// A new connection in place of the one every copy shares (the node's own address
    /// changed: requests on the old one, the watch's too, would wait for its keep-alive
    /// to fail, ten seconds). Leases held stay; the watch resumes on the new one from the
    /// revision it had reached.
    pub async fn reconnect(&mut self) -> Result<(), StoreError> {
        let fresh = EtcdStore::connect(&self.opts).await?;
        self.clients.replace(fresh.client());
        Ok(())
    }

    /// Watch breaks and failed re-lists so far (each one is followed by a reconnect).
    pub fn error_count(&self) -> u64 {
        self.errors.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn count_error(&self) {
        self.errors
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn config_key(&self) -> String {
        format!("{}/config", self.prefix)
    }

    fn subnets_prefix(&self) -> String {
        format!("{}/subnets/", self.prefix)
    }

    pub fn lease_key(&self, key: &LeaseKey) -> String {
        format!("{}{key}", self.subnets_prefix())
    }

    /// The etcd lease id behind a key this store acquired (0 for a reservation): for
    /// tests and etcd-specific diagnostics.
    pub fn lease_id(&self, key: &LeaseKey) -> Option<i64> {
        self.held.lock().expect("not poisoned").get(key).copied()
    }

    /// The raw client, for tests and for the etcd-specific diagnostics.
    pub fn client(&self) -> Client {
        self.clients.current()
    }

    /// The net-conf.json stored at `<prefix>/config`, if any.
    pub async fn get_config(&self) -> Result<Option<String>, StoreError> {
        let mut c = self.client();
        let resp = rpc(c.get(self.config_key(), None)).await?;
        Ok(resp
            .kvs()
            .first()
            .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()))
    }

    /// All leases and the revision they were read at. One Range RPC, whatever the count
    /// (flannel adds a TimeToLive per key): the lease ID in each key-value tells TTL from
    /// reservation.
    pub async fn list(&self) -> Result<(Vec<StoredLease>, i64), StoreError> {
        let (leases, _, rev) = self.list_with_ids().await?;
        Ok((leases, rev))
    }

    /// [`EtcdStore::list`] and the etcd lease behind each key.
    async fn list_with_ids(
        &self,
    ) -> Result<(Vec<StoredLease>, HashMap<LeaseKey, i64>, i64), StoreError> {
        let mut c = self.client();
        let resp = rpc(c.get(self.subnets_prefix(), Some(GetOptions::new().with_prefix()))).await?;
        let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
        let mut ids = HashMap::new();
        let leases = resp
            .kvs()
            .iter()
            .filter_map(|kv| {
                let l = self.parse_kv(kv)?;
                ids.insert(l.key, kv.lease());
                Some(l)
            })
            .collect();
        Ok((leases, ids, rev))
    }

    fn parse_key(&self, raw: &[u8]) -> Option<LeaseKey> {
        let key = String::from_utf8_lossy(raw);
        let tail = key.strip_prefix(&self.subnets_prefix())?;
        match tail.parse() {
            Ok(k) => Some(k),
            Err(e) => {
                warn!(key = %key, "ignoring key under subnets/: {e}");
                None
            }
        }
    }

    fn parse_kv(&self, kv: &KeyValue) -> Option<StoredLease> {
        let key = self.parse_key(kv.key())?;
        let attrs = match serde_json::from_slice::<LeaseAttrs>(kv.value()) {
            Ok(a) => Some(a),
            Err(e) => {
                warn!(subnet = %key, "lease value is not valid lease JSON ({e}); the subnet stays taken");
                None
            }
        };
        Some(StoredLease {
            key,
            attrs,
            reservation: kv.lease() == 0,
            mod_revision: kv.mod_revision(),
        })
    }

    /// Takes a subnet. Every write is a transaction guarded by the state we read, so two
    /// nodes never both believe they hold one subnet; a lost race excludes that subnet and
    /// tries again.
    pub async fn acquire(&self, req: &AcquireRequest) -> Result<HeldLease, StoreError> {
        let mut exclude = HashSet::new();
        let value = req.attrs.to_json();
        let ttl_secs = req.ttl.as_secs().max(1) as i64;
        for attempt in 1..=MAX_ATTEMPTS {
            let (leases, ids, _) = self.list_with_ids().await?;
            let (plan, stale) = twill_store::plan(
                &req.conf,
                &leases,
                req.attrs.node_ip(),
                req.previous,
                &exclude,
                &mut rand::rng(),
            )?;
            for s in stale {
                self.delete_if_unchanged(&s).await?;
            }
            let key = self.lease_key(plan.key());
            let mut c = self.client();
            let held = |etcd_lease: i64, source| {
                self.held
                    .lock()
                    .expect("not poisoned")
                    .insert(*plan.key(), etcd_lease);
                HeldLease {
                    key: *plan.key(),
                    attrs: req.attrs.clone(),
                    expiry: if etcd_lease == 0 {
                        Expiry::Never
                    } else {
                        Expiry::after(req.ttl)
                    },
                    source,
                }
            };
            match &plan {
                Plan::Reuse {
                    mod_revision,
                    source: PlanSource::Reservation,
                    ..
                } => {
                    let txn = Txn::new()
                        .when([Compare::mod_revision(
                            key.as_str(),
                            CompareOp::Equal,
                            *mod_revision,
                        )])
                        .and_then([TxnOp::put(key.as_str(), value.as_str(), None)]);
                    if rpc(c.txn(txn)).await?.succeeded() {
                        info!(subnet = %plan.key(), "using the subnet reserved for this node");
                        return Ok(held(0, PlanSource::Reservation));
                    }
                }
                Plan::Reuse {
                    key: reused,
                    mod_revision,
                    source,
                } => {
                    let old = ids.get(reused).copied().unwrap_or(0);
                    let id = rpc(c.lease_grant(ttl_secs, None)).await?.id();
                    let txn = Txn::new()
                        .when([Compare::mod_revision(
                            key.as_str(),
                            CompareOp::Equal,
                            *mod_revision,
                        )])
                        .and_then([TxnOp::put(
                            key.as_str(),
                            value.as_str(),
                            Some(PutOptions::new().with_lease(id)),
                        )]);
                    if rpc(c.txn(txn)).await?.succeeded() {
                        // The key now hangs off the new lease; the old one holds nothing and
                        // would otherwise live on for a day (flannel leaks one per renewal).
                        if old != 0 && old != id {
                            let _ = rpc(c.lease_revoke(old)).await;
                        }
                        info!(subnet = %plan.key(), "reusing this node's existing lease");
                        return Ok(held(id, *source));
                    }
                    let _ = rpc(c.lease_revoke(id)).await;
                }
                Plan::Create { source, .. } => {
                    let id = rpc(c.lease_grant(ttl_secs, None)).await?.id();
                    let txn = Txn::new()
                        .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
                        .and_then([TxnOp::put(
                            key.as_str(),
                            value.as_str(),
                            Some(PutOptions::new().with_lease(id)),
                        )]);
                    if rpc(c.txn(txn)).await?.succeeded() {
                        info!(subnet = %plan.key(), ?source, "leased a new subnet");
                        return Ok(held(id, *source));
                    }
                    let _ = rpc(c.lease_revoke(id)).await;
                    exclude.insert(*plan.key());
                }
            }
            debug!(subnet = %plan.key(), attempt, "lost a race for the subnet; trying again");
        }
        Err(StoreError::Contention(MAX_ATTEMPTS))
    }

    async fn delete_if_unchanged(&self, l: &StoredLease) -> Result<(), StoreError> {
        let key = self.lease_key(&l.key);
        let txn = Txn::new()
            .when([Compare::mod_revision(
                key.as_str(),
                CompareOp::Equal,
                l.mod_revision,
            )])
            .and_then([TxnOp::delete(key.as_str(), None)]);
        let mut c = self.client();
        if rpc(c.txn(txn)).await?.succeeded() {
            info!(subnet = %l.key, "deleted this node's old lease, which no longer fits the config");
        }
        Ok(())
    }

    /// Extends the lease by one keep-alive on the same etcd lease (no new lease is granted,
    /// so nothing leaks), then checks the key is still ours.
    pub async fn renew(&self, held: &HeldLease) -> Result<RenewOutcome, StoreError> {
        let mut c = self.client();
        // A key this process never acquired (none, normally) is checked as a reservation.
        let id = self.lease_id(&held.key).unwrap_or(0);
        let mut expiry = Expiry::Never;
        if id != 0 {
            let (mut keeper, mut stream) = rpc(c.lease_keep_alive(id)).await?;
            rpc(keeper.keep_alive()).await?;
            match rpc(stream.message()).await? {
                Some(r) if r.ttl() > 0 => {
                    expiry = Expiry::after(Duration::from_secs(r.ttl() as u64))
                }
                _ => return Ok(RenewOutcome::Lost),
            }
        }
        let resp = rpc(c.get(self.lease_key(&held.key), None)).await?;
        let still_ours = resp.kvs().first().is_some_and(|kv| {
            kv.lease() == id
                && serde_json::from_slice::<LeaseAttrs>(kv.value())
                    .is_ok_and(|a| a.node_ip() == held.attrs.node_ip())
        });
        Ok(if still_ours {
            RenewOutcome::Renewed(expiry)
        } else {
            RenewOutcome::Lost
        })
    }

    /// Rewrites our lease's value with `attrs` (a moved underlay), on the same etcd lease,
    /// if the key still holds what we wrote: the same lease id and our old PublicIP, and
    /// nothing written to it since we read it. A reservation (no TTL) is the operator's
    /// pin for the old PublicIP: it is not ours to move (`None`).
    pub async fn republish(
        &self,
        held: &HeldLease,
        attrs: &LeaseAttrs,
    ) -> Result<Option<HeldLease>, StoreError> {
        let key = self.lease_key(&held.key);
        let id = self.lease_id(&held.key).unwrap_or(0);
        let mut c = self.client();
        let resp = rpc(c.get(key.as_str(), None)).await?;
        let Some(kv) = resp.kvs().first() else {
            return Ok(None);
        };
        let ours = id != 0
            && kv.lease() == id
            && serde_json::from_slice::<LeaseAttrs>(kv.value())
                .is_ok_and(|a| a.node_ip() == held.attrs.node_ip());
        if !ours {
            return Ok(None);
        }
        let txn = Txn::new()
            .when([Compare::mod_revision(
                key.as_str(),
                CompareOp::Equal,
                kv.mod_revision(),
            )])
            .and_then([TxnOp::put(
                key.as_str(),
                attrs.to_json(),
                Some(PutOptions::new().with_lease(id)),
            )]);
        if !rpc(c.txn(txn)).await?.succeeded() {
            return Ok(None);
        }
        info!(subnet = %held.key, node = %attrs.node_ip(), "lease republished with this node's new underlay address");
        Ok(Some(HeldLease {
            attrs: attrs.clone(),
            ..held.clone()
        }))
    }

    /// Deletes the lease for `key` and revokes its etcd lease (uninstall). Returns what
    /// happened; a reservation is left alone, it is the operator's.
    pub async fn release_key(&self, key: &LeaseKey) -> Result<&'static str, StoreError> {
        let k = self.lease_key(key);
        let mut c = self.client();
        let resp = rpc(c.get(k.as_str(), None)).await?;
        let Some(kv) = resp.kvs().first() else {
            return Ok("no such lease");
        };
        if kv.lease() == 0 {
            return Ok("a reservation (no TTL): kept");
        }
        let txn = Txn::new()
            .when([Compare::mod_revision(
                k.as_str(),
                CompareOp::Equal,
                kv.mod_revision(),
            )])
            .and_then([TxnOp::delete(k.as_str(), None)]);
        if !rpc(c.txn(txn)).await?.succeeded() {
            return Ok("changed meanwhile: kept");
        }
        let _ = rpc(c.lease_revoke(kv.lease())).await;
        Ok("released")
    }

    /// Streams the lease set to `tx` until cancelled: a snapshot, then events from the
    /// snapshot's revision on. Reconnects with backoff when etcd goes away, resuming where
    /// it left off; re-lists (a new snapshot, which the peer table diffs) when etcd has
    /// compacted past that point. Returns when `tx` is closed or `cancel` fires.
    pub async fn watch(&self, tx: mpsc::Sender<Vec<WatchEvent>>, cancel: CancellationToken) {
        let mut backoff = Backoff::new();
        let mut next_rev: Option<i64> = None;
        while !cancel.is_cancelled() {
            let from = match next_rev {
                Some(r) => r,
                None => match self.list().await {
                    Ok((leases, rev)) => {
                        if tx.send(vec![WatchEvent::Snapshot(leases)]).await.is_err() {
                            return;
                        }
                        rev + 1
                    }
                    Err(e) => {
                        self.count_error();
                        warn!("listing leases failed, retrying: {e}");
                        backoff.sleep(&cancel).await;
                        continue;
                    }
                },
            };
            next_rev = Some(from);
            match self
                .watch_from(from, &tx, &cancel, &mut next_rev, &mut backoff)
                .await
            {
                WatchEnd::Compacted(at) => {
                    info!(
                        compacted_at = at,
                        "etcd compacted past our revision; re-listing"
                    );
                    next_rev = None;
                }
                WatchEnd::Broken(why) => {
                    self.count_error();
                    warn!(
                        "watch on {} broke ({why}); reconnecting",
                        self.subnets_prefix()
                    );
                    backoff.sleep(&cancel).await;
                }
                WatchEnd::Reconnected => {
                    info!("the node's address changed; the watch resumes on a new connection")
                }
                WatchEnd::Done => return,
            }
        }
    }

    async fn watch_from(
        &self,
        from: i64,
        tx: &mpsc::Sender<Vec<WatchEvent>>,
        cancel: &CancellationToken,
        next_rev: &mut Option<i64>,
        backoff: &mut Backoff,
    ) -> WatchEnd {
        let mut replaced = self.clients.subscribe();
        let mut c = replaced.borrow_and_update().clone();
        let opts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(from)
            .with_progress_notify();
        let mut stream = match rpc(c.watch(self.subnets_prefix(), Some(opts))).await {
            Ok(s) => s,
            Err(e) => return WatchEnd::Broken(e.to_string()),
        };
        loop {
            let msg = tokio::select! {
                _ = cancel.cancelled() => return WatchEnd::Done,
                // Every copy holds the sender, this one too, so `changed` never fails.
                Ok(()) = replaced.changed() => return WatchEnd::Reconnected,
                m = stream.message() => m,
            };
            let resp = match msg {
                Ok(Some(r)) => r,
                Ok(None) => return WatchEnd::Broken("stream closed".into()),
                Err(e) => return WatchEnd::Broken(e.to_string()),
            };
            if resp.compact_revision() > 0 {
                return WatchEnd::Compacted(resp.compact_revision());
            }
            if resp.canceled() {
                return WatchEnd::Broken(format!("cancelled by etcd: {}", resp.cancel_reason()));
            }
            backoff.reset();
            let mut batch = Vec::with_capacity(resp.events().len());
            for ev in resp.events() {
                let Some(kv) = ev.kv() else { continue };
                *next_rev = Some(kv.mod_revision() + 1);
                match ev.event_type() {
                    EventType::Put => {
                        if let Some(l) = self.parse_kv(kv) {
                            batch.push(WatchEvent::Put(l));
                        }
                    }
                    EventType::Delete => {
                        if let Some(k) = self.parse_key(kv.key()) {
                            batch.push(WatchEvent::Delete(k));
                        }
                    }
                }
            }
            // A progress notification (no events, not the creation ack) vouches that
            // nothing under our prefix changed up to its header revision.
            if resp.events().is_empty() && !resp.created() {
                if let Some(h) = resp.header() {
                    *next_rev = Some(next_rev.unwrap_or(0).max(h.revision() + 1));
                }
            }
            if !batch.is_empty() && tx.send(batch).await.is_err() {
                return WatchEnd::Done;
            }
        }
    }
}

enum WatchEnd {
    Compacted(i64),
    Broken(String),
    /// `reconnect` gave every copy a new client: resume on it, from where we were.
    Reconnected,
    Done,
}

/// 100 ms doubling to 5 s, flannel's reconnect schedule.
struct Backoff {
    next: Duration,
}

impl Backoff {
    const MIN: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(5);

    fn new() -> Self {
        Backoff { next: Self::MIN }
    }

    fn reset(&mut self) {
        self.next = Self::MIN;
    }

    async fn sleep(&mut self, cancel: &CancellationToken) {
        let d = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        tokio::select! {
            _ = cancel.cancelled() => {}
            _ = tokio::time::sleep(d) => {}
        }
    }
}

impl SubnetManager for EtcdStore {
    fn kind(&self) -> &'static str {
        "etcd"
    }

    async fn advertised_macs(&self, node_ip: std::net::IpAddr) -> (Option<String>, Option<String>) {
        let Ok((leases, _)) = self.list().await else {
            return (None, None);
        };
        leases
            .into_iter()
            .filter_map(|l| l.attrs)
            .find(|a| a.node_ip() == node_ip)
            .map(|a| {
                (
                    a.vxlan_data().map(|d| d.vtep_mac),
                    a.vxlan_v6_data().map(|d| d.vtep_mac),
                )
            })
            .unwrap_or_default()
    }

    async fn acquire(&self, req: &AcquireRequest) -> Result<HeldLease, StoreError> {
        EtcdStore::acquire(self, req).await
    }

    async fn renew(&self, held: &HeldLease) -> Result<RenewOutcome, StoreError> {
        EtcdStore::renew(self, held).await
    }

    async fn republish(
        &self,
        held: &HeldLease,
        attrs: &LeaseAttrs,
    ) -> Result<Option<HeldLease>, StoreError> {
        EtcdStore::republish(self, held, attrs).await
    }

    async fn reconnect(&mut self) -> Result<(), StoreError> {
        EtcdStore::reconnect(self).await
    }

    fn servers(&self) -> Vec<String> {
        self.opts
            .endpoints
            .iter()
            .filter_map(|e| twill_store::server_of(e, 2379))
            .collect()
    }

    async fn watch(&self, tx: mpsc::Sender<Vec<WatchEvent>>, cancel: CancellationToken) {
        EtcdStore::watch(self, tx, cancel).await
    }

    fn error_count(&self) -> u64 {
        EtcdStore::error_count(self)
    }
}
