//! The one API client a node's requests and watches share, made again when the node's
//! address changes.
//!
//! A connection from an address the node no longer holds does not fail: the kernel drops
//! what it sends and nothing comes back, so a request on it, or a watch, waits for the
//! client's read timeout (295 s). A new client has a new pool, whose connections start
//! from the address the node has now; the watches begun on the old one are begun again on
//! it, each from a fresh listing.

use std::fmt::Debug;
use std::pin::Pin;

use futures::{Stream, StreamExt};
use kube::runtime::watcher::{self, watcher, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;

/// Shared by every copy of the store and by the policy watchers: replacing the client in
/// one is seen by all, and [`rewatching`] begins its watch again on the new one.
pub type Clients = twill_store::Shared<Client>;

type Events<K> = Pin<Box<dyn Stream<Item = watcher::Result<Event<K>>> + Send>>;

/// kube-rs's watcher (with its backoff) over `api(client)`, begun again on each client
/// [`Clients::replace`] puts in. A new watcher starts with `Init`: the consumer handles it
/// as the re-list after a gap it already is, so nothing the old stream missed is lost.
pub fn rewatching<K>(
    clients: &Clients,
    api: fn(Client) -> Api<K>,
    config: watcher::Config,
) -> impl Stream<Item = watcher::Result<Event<K>>> + Send
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send,
{
    let start = move |client: Client| -> Events<K> {
        watcher(api(client), config.clone())
            .default_backoff()
            .boxed()
    };
    let mut rx = clients.subscribe();
    let first = start(rx.borrow_and_update().clone());
    futures::stream::unfold(
        (Some(rx), first, start),
        |(mut rx, mut events, start)| async move {
            loop {
                let changed = async {
                    match rx.as_mut() {
                        Some(rx) => rx.changed().await.is_ok(),
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    // A client replaced while events wait: the old stream is the one that
                    // may be stuck, so it goes first.
                    biased;
                    fresh = changed => match (fresh, rx.as_mut()) {
                        (true, Some(r)) => {
                            let client = r.borrow_and_update().clone();
                            events = start(client);
                        }
                        // Every holder of the client is gone: keep the stream there is.
                        _ => rx = None,
                    },
                    ev = events.next() => return ev.map(|ev| (ev, (rx, events, start))),
                }
            }
        },
    )
}
