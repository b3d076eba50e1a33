//! Watches: the hub the state machine publishes applied revisions to ([`Hub`]) and the
//! per-stream watcher bookkeeping ([`stream`]) that turns them, plus history read back from
//! disk, into etcd watch responses with no gap and no duplicate.

pub mod stream;

use std::sync::Arc;

use tokio::sync::broadcast;

use crate::pb::mvccpb::Event;
use crate::progress::Progress;

/// Revisions kept for slow watch streams before they must catch up from disk instead.
const HUB_CAPACITY: usize = 1024;

/// What the state machine announces after a commit.
#[derive(Debug, Clone, PartialEq)]
pub struct Published {
    /// The store revision this message brings every watcher up to.
    pub revision: i64,
    /// The events of that revision (empty for a reset).
    pub events: Vec<Event>,
    /// The state was replaced (a snapshot was installed): watchers catch up from disk.
    pub reset: bool,
}

/// Fan-out of applied revisions to every watch stream of this member.
#[derive(Debug)]
pub struct Hub {
    tx: broadcast::Sender<Arc<Published>>,
    published: Progress,
}

impl Hub {
    pub fn new(revision: i64) -> Self {
        let (tx, _) = broadcast::channel(HUB_CAPACITY);
        Hub {
            tx,
            published: Progress::new(revision),
        }
    }

    /// Announces a revision whose data is committed to disk.
    ///
    /// The revision is recorded before it is sent: a stream that subscribed earlier and reads
    /// [`Hub::published`] either finds it in history or receives it, never neither.
    pub fn publish(&self, revision: i64, events: Vec<Event>) {
        self.published.advance(revision);
        let _ = self.tx.send(Arc::new(Published {
            revision,
            events,
            reset: false,
        }));
    }

    /// Announces that the state was replaced up to `revision`.
    pub fn reset(&self, revision: i64) {
        self.published.advance(revision);
        let _ = self.tx.send(Arc::new(Published {
            revision,
            events: Vec::new(),
            reset: true,
        }));
    }

    /// The newest revision whose data is on disk and announced.
    pub fn published(&self) -> i64 {
        self.published.get()
    }

    /// Returns once `revision` is published.
    pub async fn reached(&self, revision: i64) {
        self.published.reached(revision).await
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Published>> {
        self.tx.subscribe()
    }
}
