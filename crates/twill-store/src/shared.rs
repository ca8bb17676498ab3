//! The one client every copy of a store shares (its requests, its watches), made again
//! when the node's address changes.

use std::sync::Arc;

use tokio::sync::watch;

/// A client (etcd's, the Kubernetes API's) shared by every copy of a store and by the
/// watches begun on it: replacing it in one copy is seen by all, and a watch subscribed
/// to it learns of the replacement to begin again on the new one.
pub struct Shared<C>(Arc<watch::Sender<C>>);

// Derived Clone would ask C: Clone of the handle, which clones only the Arc.
impl<C> Clone for Shared<C> {
    fn clone(&self) -> Self {
        Shared(self.0.clone())
    }
}

impl<C: Clone> Shared<C> {
    pub fn new(client: C) -> Self {
        Shared(Arc::new(watch::channel(client).0))
    }

    /// The client to send a request through now.
    pub fn current(&self) -> C {
        self.0.borrow().clone()
    }

    /// From now on requests go through `client`, and every subscriber is told.
    pub fn replace(&self, client: C) {
        self.0.send_replace(client);
    }

    /// For a watch: the client now (`borrow_and_update`) and each one that replaces it.
    pub fn subscribe(&self) -> watch::Receiver<C> {
        self.0.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::Shared;

    #[tokio::test]
    async fn a_replacement_is_seen_by_every_copy_and_told_to_subscribers() {
        let a = Shared::new(1);
        let b = a.clone();
        let mut rx = b.subscribe();
        assert_eq!(*rx.borrow_and_update(), 1);
        a.replace(2);
        assert_eq!(b.current(), 2);
        rx.changed().await.unwrap();
        assert_eq!(*rx.borrow_and_update(), 2);
    }
}
