//! The etcd `Watch` service. Each stream runs one task that owns its [`Watchers`]: it takes
//! applied revisions live from the hub, lets new or lagging watchers catch up from history on
//! disk one chunk at a time, and answers create, cancel and progress requests.

use std::pin::Pin;
use std::sync::Arc;

use futures::{FutureExt, Stream};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::Node;
use crate::mvcc::{self, Revision};
use crate::pb::etcdserverpb::watch_server::Watch;
use crate::pb::etcdserverpb::{WatchRequest, WatchResponse, watch_request};
use crate::pb::mvccpb::{Event, event::EventType};
use crate::watch::stream::Watchers;

/// Records and bytes read from history per catch-up step (whole revisions, so a little more):
/// one response stays well under clients' default 4 MiB message limit.
const CATCH_UP_RECORDS: usize = 1000;
const CATCH_UP_BYTES: usize = 2 << 20;
/// Responses buffered per stream before the stream task waits for the client.
const STREAM_BUFFER: usize = 128;

pub struct WatchService {
    pub node: Arc<Node>,
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Watch for WatchService {
    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<WatchStream>, Status> {
        let input = request.into_inner();
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let node = self.node.clone();
        tokio::spawn(async move {
            let mut s = StreamTask {
                node,
                out: tx,
                watchers: Watchers::default(),
            };
            if let Err(e) = s.run(input).await {
                let _ = s.out.send(Err(e)).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

struct StreamTask {
    node: Arc<Node>,
    out: mpsc::Sender<Result<WatchResponse, Status>>,
    watchers: Watchers,
}

/// Why the stream task stops without an error for the client.
struct Closed;

impl StreamTask {
    async fn run(&mut self, mut input: Streaming<WatchRequest>) -> Result<(), Status> {
        // Subscribe before any watcher exists: every revision announced after a watcher reads
        // the published revision reaches this receiver.
        let mut live = self.node.kv.hub.subscribe();
        let mut ticker = tokio::time::interval(self.node.limits.watch_progress_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        loop {
            if let Some(id) = self.watchers.first_unsynced() {
                // Stay responsive to the client between catch-up steps.
                if let Some(msg) = input.message().now_or_never() {
                    match msg {
                        Ok(Some(req)) => {
                            if self.handle(req).await.is_err() {
                                return Ok(());
                            }
                        }
                        Ok(None) | Err(_) => return Ok(()),
                    }
                    continue;
                }
                if self.catch_up(id).await?.is_err() {
                    return Ok(());
                }
                continue;
            }
            tokio::select! {
                msg = input.message() => match msg {
                    Ok(Some(req)) => {
                        if self.handle(req).await.is_err() {
                            return Ok(());
                        }
                    }
                    Ok(None) | Err(_) => return Ok(()),
                },
                published = live.recv() => match published {
                    Ok(p) if p.reset => self.watchers.unsync_all(),
                    Ok(p) => {
                        if self.deliver(p.revision, &p.events).await?.is_err() {
                            return Ok(());
                        }
                    }
                    // Fell behind the hub: catch up from disk instead.
                    Err(RecvError::Lagged(_)) => self.watchers.unsync_all(),
                    Err(RecvError::Closed) => return Ok(()),
                },
                _ = ticker.tick() => {
                    if self.progress_tick().await.is_err() {
                        return Ok(());
                    }
                }
                _ = self.out.closed() => return Ok(()),
            }
        }
    }

    async fn send(&self, resp: WatchResponse) -> Result<(), Closed> {
        self.out.send(Ok(resp)).await.map_err(|_| Closed)
    }

    async fn handle(&mut self, req: WatchRequest) -> Result<(), Closed> {
        let published = self.node.kv.hub.published();
        match req.request_union {
            Some(watch_request::RequestUnion::CreateRequest(c)) => {
                let created = self.watchers.create(&c, published);
                let (id, canceled, reason) = match created {
                    Ok(id) => (id, false, String::new()),
                    Err(e) => (-1, true, e.to_string()),
                };
                self.send(WatchResponse {
                    header: Some(self.node.header(published)),
                    watch_id: id,
                    created: true,
                    canceled,
                    cancel_reason: reason,
                    ..WatchResponse::default()
                })
                .await
            }
            Some(watch_request::RequestUnion::CancelRequest(c)) => {
                if self.watchers.cancel(c.watch_id) {
                    self.send(WatchResponse {
                        header: Some(self.node.header(published)),
                        watch_id: c.watch_id,
                        canceled: true,
                        ..WatchResponse::default()
                    })
                    .await?;
                }
                Ok(())
            }
            Some(watch_request::RequestUnion::ProgressRequest(_)) => {
                let rev = self.watchers.progress_revision(published);
                self.send(WatchResponse {
                    header: Some(self.node.header(rev)),
                    // Not tied to one watcher: etcd uses -1.
                    watch_id: -1,
                    ..WatchResponse::default()
                })
                .await
            }
            // etcd ignores requests it does not understand rather than ending the stream.
            None => Ok(()),
        }
    }

    /// Sends a live revision to the synced watchers that want part of it.
    async fn deliver(
        &mut self,
        revision: i64,
        events: &[Event],
    ) -> Result<Result<(), Closed>, Status> {
        let batches = self.watchers.on_revision(revision, events);
        for (id, mut evs) in batches {
            let wants_prev = self.watchers.get(id).is_some_and(|w| w.prev_kv);
            if wants_prev {
                for e in &mut evs {
                    self.attach_prev(e).await?;
                }
            }
            let resp = WatchResponse {
                header: Some(self.node.header(revision)),
                watch_id: id,
                events: evs,
                ..WatchResponse::default()
            };
            if self.send(resp).await.is_err() {
                return Ok(Err(Closed));
            }
        }
        Ok(Ok(()))
    }

    /// etcd's rule: a watcher with `prev_kv` gets the key's previous value on every event but
    /// a creation.
    async fn attach_prev(&self, e: &mut Event) -> Result<(), Status> {
        let Some(kv) = &e.kv else {
            return Ok(());
        };
        let is_create = e.r#type == EventType::Put as i32 && kv.create_revision == kv.mod_revision;
        if is_create {
            return Ok(());
        }
        let key = kv.key.clone();
        let rev = Revision::new(kv.mod_revision, 0);
        let prev = self
            .node
            .blocking(move |kv| {
                kv.prev_kv(&key, rev)
                    .map_err(|e| crate::error::EtcdError::Internal(e.to_string()))
            })
            .await?;
        e.prev_kv = prev;
        Ok(())
    }

    /// One catch-up step for watcher `id`: the next chunk of history up to the published
    /// revision, or the compaction error when that history is gone.
    async fn catch_up(&mut self, id: i64) -> Result<Result<(), Closed>, Status> {
        let Some(w) = self.watchers.get(id).cloned() else {
            return Ok(Ok(()));
        };
        let target = self.node.kv.hub.published();
        let from = w.next_rev;
        let prev_kv = w.prev_kv;
        let history = self
            .node
            .blocking(move |kv| {
                kv.history(from, target, CATCH_UP_RECORDS, CATCH_UP_BYTES, prev_kv)
                    .map_err(|e| crate::error::EtcdError::Internal(e.to_string()))
            })
            .await?;
        let (records, complete) = match history {
            Ok(found) => found,
            Err(compact_revision) => {
                // etcd cancels the watcher and reports the compaction revision.
                self.watchers.cancel(id);
                let resp = WatchResponse {
                    header: Some(self.node.header(target)),
                    watch_id: id,
                    canceled: true,
                    compact_revision,
                    cancel_reason: crate::error::EtcdError::Compacted.to_string(),
                    ..WatchResponse::default()
                };
                return Ok(self.send(resp).await);
            }
        };

        let reached = if complete {
            target
        } else {
            records.last().map_or(target, |(r, _, _)| r.main)
        };
        let events: Vec<Event> = records
            .into_iter()
            .filter_map(|(_, record, prev)| {
                let mut e = mvcc::record_event(&record);
                if !w.wants(&e) {
                    return None;
                }
                let is_create = e.r#type == EventType::Put as i32
                    && e.kv
                        .as_ref()
                        .is_some_and(|kv| kv.create_revision == kv.mod_revision);
                if prev_kv && !is_create {
                    e.prev_kv = prev;
                }
                Some(e)
            })
            .collect();
        self.watchers.caught_up(id, reached + 1, target);
        if !events.is_empty() {
            let resp = WatchResponse {
                header: Some(self.node.header(target)),
                watch_id: id,
                events,
                ..WatchResponse::default()
            };
            return Ok(self.send(resp).await);
        }
        Ok(Ok(()))
    }

    async fn progress_tick(&mut self) -> Result<(), Closed> {
        let published = self.node.kv.hub.published();
        for id in self.watchers.progress_due() {
            let rev = self
                .watchers
                .get(id)
                .map_or(published, |w| (w.next_rev - 1).min(published));
            self.send(WatchResponse {
                header: Some(self.node.header(rev)),
                watch_id: id,
                ..WatchResponse::default()
            })
            .await?;
        }
        Ok(())
    }
}
