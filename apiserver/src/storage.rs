//! The apiserver's only state: objects in an etcd v3 store (miniorch-store or real etcd),
//! reached through the etcd gRPC API alone. Keys are `/registry/<resource>/[<namespace>/]<name>`;
//! an object's `resourceVersion` is its key's `mod_revision`, a list's is the store revision.

use std::time::Duration;

use futures::{Stream, StreamExt};
use miniorch_store::pb::etcdserverpb::{
    self as pb, compare, kv_client::KvClient, request_op, response_op, watch_client::WatchClient,
    watch_request,
};
use miniorch_store::pb::mvccpb;
use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint};

/// Largest gRPC message accepted from the store (big lists arrive in one range response).
const MAX_MESSAGE: usize = 1 << 30;

/// What can go wrong talking to the store.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The revision asked for was compacted away (the store's compact revision).
    #[error("required revision has been compacted (compact revision {0})")]
    Compacted(i64),
    /// The revision asked for is newer than the store's.
    #[error("required revision is a future revision")]
    FutureRevision,
    /// The store cannot be reached or did not answer.
    #[error("etcd unavailable: {0}")]
    Unavailable(String),
    #[error("etcd error: {0}")]
    Other(String),
}

impl From<tonic::Status> for StoreError {
    fn from(s: tonic::Status) -> Self {
        let msg = s.message();
        if msg.contains("required revision has been compacted") {
            StoreError::Compacted(0)
        } else if msg.contains("future revision") {
            StoreError::FutureRevision
        } else if matches!(
            s.code(),
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
        ) {
            StoreError::Unavailable(msg.to_string())
        } else {
            StoreError::Other(format!("{:?}: {msg}", s.code()))
        }
    }
}

/// A stored object: its JSON and revisions.
#[derive(Debug, Clone)]
pub struct Item {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub mod_revision: i64,
    pub create_revision: i64,
}

impl From<mvccpb::KeyValue> for Item {
    fn from(kv: mvccpb::KeyValue) -> Self {
        Item {
            key: kv.key,
            value: kv.value,
            mod_revision: kv.mod_revision,
            create_revision: kv.create_revision,
        }
    }
}

/// One page of a range read.
#[derive(Debug, Clone)]
pub struct Page {
    pub items: Vec<Item>,
    /// Whether keys remain after the last one returned.
    pub more: bool,
    /// The store revision the page was read at.
    pub revision: i64,
}

/// The outcome of a conditional write.
#[derive(Debug, Clone)]
pub enum Write {
    /// Written at this revision.
    Done(i64),
    /// The condition failed; the key's current state (None: it does not exist).
    Conflict(Option<Item>),
}

/// What a transaction requires of a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cond {
    /// The key does not exist.
    Absent,
    /// The key was last written at this revision.
    ModRevision(i64),
}

/// An all-or-nothing write: conditions, then puts and deletes. On failure the current value
/// of `read_back` is returned.
#[derive(Debug, Clone)]
pub struct Txn {
    pub conditions: Vec<(String, Cond)>,
    pub puts: Vec<(String, Vec<u8>)>,
    pub deletes: Vec<String>,
    pub read_back: String,
}

impl Txn {
    pub fn new(read_back: &str) -> Self {
        Txn {
            conditions: Vec::new(),
            puts: Vec::new(),
            deletes: Vec::new(),
            read_back: read_back.to_string(),
        }
    }
    pub fn absent(mut self, key: &str) -> Self {
        self.conditions.push((key.to_string(), Cond::Absent));
        self
    }
    pub fn at(mut self, key: &str, revision: i64) -> Self {
        self.conditions
            .push((key.to_string(), Cond::ModRevision(revision)));
        self
    }
    pub fn put(mut self, key: &str, value: Vec<u8>) -> Self {
        self.puts.push((key.to_string(), value));
        self
    }
    pub fn delete(mut self, key: &str) -> Self {
        self.deletes.push(key.to_string());
        self
    }
}

/// One change seen by a watch.
#[derive(Debug, Clone)]
pub enum Change {
    /// Created or modified; `prev` is the previous version if there was one.
    Put { item: Item, prev: Option<Item> },
    /// Deleted at `revision`; `prev` is the last version.
    Delete {
        key: Vec<u8>,
        revision: i64,
        prev: Option<Item>,
    },
    /// Nothing changed up to this revision (a progress notification).
    Progress(i64),
}

/// Asks a watch's store for a progress notification: a revision up to which every change has
/// been delivered.
#[derive(Clone)]
pub struct ProgressHandle(mpsc::Sender<pb::WatchRequest>);

impl ProgressHandle {
    /// False if the watch has ended or too many requests are pending.
    pub fn request(&self) -> bool {
        let req = pb::WatchRequest {
            request_union: Some(watch_request::RequestUnion::ProgressRequest(
                pb::WatchProgressRequest {},
            )),
        };
        self.0.try_send(req).is_ok()
    }
}

/// A handle on the store; cheap to clone.
#[derive(Clone)]
pub struct Etcd {
    kv: KvClient<Channel>,
    watch: WatchClient<Channel>,
}

impl Etcd {
    /// Connects lazily to `endpoints` (`http://host:port`), balancing across them.
    pub fn connect(endpoints: &[String]) -> anyhow::Result<Self> {
        let mut eps = Vec::new();
        for e in endpoints {
            let url = if e.contains("://") {
                e.clone()
            } else {
                format!("http://{e}")
            };
            eps.push(
                Endpoint::from_shared(url.clone())
                    .map_err(|err| anyhow::anyhow!("--etcd-servers {url:?} is not a URL: {err}"))?
                    .connect_timeout(Duration::from_secs(5))
                    .tcp_nodelay(true)
                    .http2_keep_alive_interval(Duration::from_secs(30)),
            );
        }
        anyhow::ensure!(
            !eps.is_empty(),
            "--etcd-servers is empty: give at least one store URL"
        );
        let channel = Channel::balance_list(eps.into_iter());
        Ok(Etcd {
            kv: KvClient::new(channel.clone()).max_decoding_message_size(MAX_MESSAGE),
            watch: WatchClient::new(channel).max_decoding_message_size(MAX_MESSAGE),
        })
    }

    /// The current store revision (a cheap health check too).
    pub async fn revision(&self) -> Result<i64, StoreError> {
        let resp = self
            .kv
            .clone()
            .range(pb::RangeRequest {
                key: vec![0],
                count_only: true,
                ..Default::default()
            })
            .await?
            .into_inner();
        Ok(resp.header.map_or(0, |h| h.revision))
    }

    /// Reads one key at the latest revision.
    pub async fn get(&self, key: &str) -> Result<(Option<Item>, i64), StoreError> {
        let resp = self
            .kv
            .clone()
            .range(pb::RangeRequest {
                key: key.as_bytes().to_vec(),
                ..Default::default()
            })
            .await?
            .into_inner();
        let rev = resp.header.map_or(0, |h| h.revision);
        Ok((resp.kvs.into_iter().next().map(Item::from), rev))
    }

    /// Reads keys in `[start, end)` at `revision` (0: latest), at most `limit` (0: all).
    pub async fn range(
        &self,
        start: &[u8],
        end: &[u8],
        revision: i64,
        limit: i64,
    ) -> Result<Page, StoreError> {
        let resp = self
            .kv
            .clone()
            .range(pb::RangeRequest {
                key: start.to_vec(),
                range_end: end.to_vec(),
                revision,
                limit,
                ..Default::default()
            })
            .await
            .map_err(|s| compacted_or(s, revision))?
            .into_inner();
        Ok(Page {
            revision: resp.header.map_or(0, |h| h.revision),
            more: resp.more,
            items: resp.kvs.into_iter().map(Item::from).collect(),
        })
    }

    /// Writes `value` at `key` if the key does not exist.
    pub async fn create(&self, key: &str, value: Vec<u8>) -> Result<Write, StoreError> {
        self.commit(Txn::new(key).absent(key).put(key, value)).await
    }

    /// Writes `value` at `key` if its mod revision is still `expected`.
    pub async fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        expected: i64,
    ) -> Result<Write, StoreError> {
        self.commit(Txn::new(key).at(key, expected).put(key, value))
            .await
    }

    /// Deletes `key` if its mod revision is still `expected`.
    pub async fn delete(&self, key: &str, expected: i64) -> Result<Write, StoreError> {
        self.commit(Txn::new(key).at(key, expected).delete(key))
            .await
    }

    /// Applies `t` atomically: every write if every condition holds, nothing otherwise.
    pub async fn commit(&self, t: Txn) -> Result<Write, StoreError> {
        let compare = t
            .conditions
            .iter()
            .map(|(key, cond)| {
                let (target, union) = match cond {
                    Cond::Absent => (
                        compare::CompareTarget::Create,
                        compare::TargetUnion::CreateRevision(0),
                    ),
                    Cond::ModRevision(r) => (
                        compare::CompareTarget::Mod,
                        compare::TargetUnion::ModRevision(*r),
                    ),
                };
                pb::Compare {
                    result: compare::CompareResult::Equal as i32,
                    target: target as i32,
                    key: key.as_bytes().to_vec(),
                    range_end: vec![],
                    target_union: Some(union),
                }
            })
            .collect();
        let mut success: Vec<pb::RequestOp> = t
            .puts
            .into_iter()
            .map(|(key, value)| pb::RequestOp {
                request: Some(request_op::Request::RequestPut(pb::PutRequest {
                    key: key.into_bytes(),
                    value,
                    ..Default::default()
                })),
            })
            .collect();
        success.extend(t.deletes.into_iter().map(|key| pb::RequestOp {
            request: Some(request_op::Request::RequestDeleteRange(
                pb::DeleteRangeRequest {
                    key: key.into_bytes(),
                    ..Default::default()
                },
            )),
        }));
        let req = pb::TxnRequest {
            compare,
            success,
            failure: vec![get_op(t.read_back.as_bytes())],
        };
        let resp = self.kv.clone().txn(req).await?.into_inner();
        let rev = resp.header.map_or(0, |h| h.revision);
        if resp.succeeded {
            return Ok(Write::Done(rev));
        }
        let current = resp.responses.into_iter().find_map(|r| match r.response {
            Some(response_op::Response::ResponseRange(range)) => {
                range.kvs.into_iter().next().map(Item::from)
            }
            _ => None,
        });
        Ok(Write::Conflict(current))
    }

    /// Which of `keys` exist now.
    pub async fn existing(&self, keys: &[String]) -> Result<Vec<String>, StoreError> {
        let mut out = Vec::new();
        for k in keys {
            if self.get(k).await?.0.is_some() {
                out.push(k.clone());
            }
        }
        Ok(out)
    }

    /// Watches `[start, end)` from revision `from` (inclusive), with previous values. The stream
    /// ends with an error if the store compacts past it or goes away; dropping it cancels the
    /// watch. The handle asks the store for a progress notification ([`Change::Progress`]).
    pub async fn watch(
        &self,
        start: &[u8],
        end: &[u8],
        from: i64,
    ) -> Result<
        (
            impl Stream<Item = Result<Vec<Change>, StoreError>> + Send + 'static,
            ProgressHandle,
        ),
        StoreError,
    > {
        let (tx, rx) = mpsc::channel::<pb::WatchRequest>(4);
        let create = pb::WatchRequest {
            request_union: Some(watch_request::RequestUnion::CreateRequest(
                pb::WatchCreateRequest {
                    key: start.to_vec(),
                    range_end: end.to_vec(),
                    start_revision: from,
                    prev_kv: true,
                    ..Default::default()
                },
            )),
        };
        tx.send(create)
            .await
            .map_err(|_| StoreError::Unavailable("watch channel closed".into()))?;
        let mut responses = self
            .watch
            .clone()
            .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?
            .into_inner();
        // The first response confirms (or refuses) the watch.
        match responses.message().await? {
            Some(r) if r.canceled || r.compact_revision > 0 => {
                return Err(if r.compact_revision > 0 {
                    StoreError::Compacted(r.compact_revision)
                } else {
                    StoreError::Other(format!("watch refused: {}", r.cancel_reason))
                });
            }
            Some(_) => {}
            None => return Err(StoreError::Unavailable("watch stream closed".into())),
        }
        let handle = ProgressHandle(tx.clone());
        let stream = futures::stream::unfold(Some((responses, tx)), |state| async move {
            let (mut responses, tx) = state?;
            loop {
                match responses.message().await {
                    Ok(Some(r)) => {
                        if r.compact_revision > 0 {
                            return Some((Err(StoreError::Compacted(r.compact_revision)), None));
                        }
                        if r.canceled {
                            return Some((
                                Err(StoreError::Other(format!(
                                    "watch canceled: {}",
                                    r.cancel_reason
                                ))),
                                None,
                            ));
                        }
                        if r.events.is_empty() {
                            let rev = r.header.map_or(0, |h| h.revision);
                            if rev > 0 && !r.created {
                                return Some((
                                    Ok(vec![Change::Progress(rev)]),
                                    Some((responses, tx)),
                                ));
                            }
                            continue;
                        }
                        let changes = r.events.into_iter().filter_map(change).collect();
                        return Some((Ok(changes), Some((responses, tx))));
                    }
                    Ok(None) => {
                        return Some((
                            Err(StoreError::Unavailable("watch stream closed".into())),
                            None,
                        ));
                    }
                    Err(s) => return Some((Err(StoreError::from(s)), None)),
                }
            }
        });
        Ok((stream.boxed(), handle))
    }
}

fn change(e: mvccpb::Event) -> Option<Change> {
    let kv = e.kv?;
    let prev = e.prev_kv.map(Item::from);
    if e.r#type == mvccpb::event::EventType::Delete as i32 {
        Some(Change::Delete {
            key: kv.key,
            revision: kv.mod_revision,
            prev,
        })
    } else {
        Some(Change::Put {
            item: Item::from(kv),
            prev,
        })
    }
}

fn get_op(key: &[u8]) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(request_op::Request::RequestRange(pb::RangeRequest {
            key: key.to_vec(),
            ..Default::default()
        })),
    }
}

fn compacted_or(s: tonic::Status, revision: i64) -> StoreError {
    match StoreError::from(s) {
        StoreError::Compacted(_) => StoreError::Compacted(revision),
        e => e,
    }
}

/// The end of the range holding every key that starts with `prefix` (etcd's "prefix + 1").
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn prefix_end_is_the_next_key() {
        assert_eq!(prefix_end(b"/registry/pods/"), b"/registry/pods0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
    }
}
