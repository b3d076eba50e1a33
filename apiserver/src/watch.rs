//! WATCH: a chunked stream of `{"type": ..., "object": ...}` lines. Served from the resource's
//! watch cache when it can (the usual case: one store watch for all watchers), from a store
//! watch of its own otherwise (a resourceVersion older than the cache's ring). Selectors are
//! applied to the new and the previous version of each object, so a client sees ADDED when an
//! object starts to match and DELETED when it stops, as upstream.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use futures::StreamExt;
use http::{StatusCode, header};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::cache::{CacheEvent, CacheWatch, EventType, Freshness, Start};
use crate::errors::{ApiError, ApiResult};
use crate::handlers::{
    ApiRequest, Filter, Typed, decode_item, decode_stored, list_objects, prefix,
};
use crate::http::{Query, Wanted};
use crate::registry::Kind;
use crate::storage::{Change, StoreError, prefix_end};
use crate::{State, table};

/// How often a watch that allows bookmarks gets one.
const BOOKMARK_EVERY: Duration = Duration::from_secs(60);

/// What one watch request asked for.
struct Params {
    filter: Arc<Filter>,
    bookmarks: bool,
    timeout: Duration,
    send_initial: bool,
    render: Render,
}

/// How one event is rendered for this watcher.
struct Render {
    table: bool,
    include: table::IncludeObject,
    first: bool,
}

impl Render {
    fn event<K: Kind>(&mut self, kind: &str, obj: &K) -> Bytes {
        let object = if self.table {
            let rv = obj.metadata().resource_version.clone().unwrap_or_default();
            let t = table::build(std::slice::from_ref(obj), &rv, self.include, self.first);
            self.first = false;
            t
        } else {
            serde_json::to_value(obj).unwrap_or(Value::Null)
        };
        line(&json!({"type": kind, "object": object}))
    }

    /// A cached object: its JSON goes out as it is, unless a Table was asked for.
    fn cached<K: Kind>(&mut self, kind: &str, e: &CacheEvent) -> ApiResult<Bytes> {
        if self.table {
            return Ok(self.event(kind, &e.object.object::<K>()?));
        }
        let mut out = Vec::with_capacity(e.object.json.len() + 32);
        out.extend_from_slice(b"{\"type\":\"");
        out.extend_from_slice(kind.as_bytes());
        out.extend_from_slice(b"\",\"object\":");
        out.extend_from_slice(&e.object.json);
        out.extend_from_slice(b"}\n");
        Ok(Bytes::from(out))
    }
}

fn line(v: &Value) -> Bytes {
    let mut bytes = serde_json::to_vec(v).unwrap_or_default();
    bytes.push(b'\n');
    Bytes::from(bytes)
}

fn error_event(e: &ApiError) -> Bytes {
    line(&json!({"type": "ERROR", "object": e.status()}))
}

fn bookmark<K: Kind>(rv: i64, initial_end: bool) -> Bytes {
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if initial_end {
        metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    line(
        &json!({"type": "BOOKMARK", "object": {"kind": K::KIND, "apiVersion": K::API_VERSION, "metadata": metadata}}),
    )
}

fn params<K: Kind>(req: &ApiRequest) -> ApiResult<Params> {
    let rv = req.query.get("resourceVersion").unwrap_or("");
    Ok(Params {
        filter: Arc::new(Filter::from_query::<K>(&req.query)?),
        bookmarks: req.query.flag("allowWatchBookmarks"),
        timeout: match req.query.int("timeoutSeconds")? {
            Some(s) if s > 0 => Duration::from_secs(s as u64),
            // Upstream closes idle watches after 30-60 minutes so clients rebalance.
            _ => Duration::from_secs(1800 + rand::random_range(0..1800)),
        },
        send_initial: match req.query.get("sendInitialEvents") {
            Some("true") => true,
            Some("false") => false,
            _ => rv.is_empty() || rv == "0",
        },
        render: Render {
            table: req.wanted() == Wanted::Table,
            include: table::IncludeObject::parse(req.query.get("includeObject")),
            first: true,
        },
    })
}

pub async fn watch<K: Kind>(ep: &Typed<K>, st: &State, req: &ApiRequest) -> ApiResult<Response> {
    let p = params::<K>(req)?;
    let ns = req.path.namespace.clone();
    let rv = req.query.get("resourceVersion").unwrap_or("");
    let from: Option<i64> = if p.send_initial {
        None
    } else {
        Some(rv.parse().map_err(|_| {
            ApiError::bad_request(format!(
                "invalid resourceVersion {rv:?}: must be an integer"
            ))
        })?)
    };
    let cache = ep.cache(st);
    let fresh = match from {
        Some(rv) => Freshness::AtLeast(rv),
        None if rv.is_empty() => Freshness::Latest,
        None => Freshness::Any,
    };
    if cache.fresh(fresh).await {
        let start = from.map_or(Start::Now, Start::After);
        if let Some(cw) = cache.watch(ns.as_deref(), p.filter.clone(), start) {
            let shutdown = st.shutdown.clone();
            return Ok(stream(move |tx| {
                serve_cached::<K>(cw, from, p, tx, shutdown)
            }));
        }
    }
    serve_from_store::<K>(st, ns.as_deref(), from, p).await
}

/// Rendered events waiting for the client's socket. Small: the cache's per-watcher queue (of
/// shared, unrendered events) is the buffer that decides when a watcher is too slow, and a
/// store watch is flow-controlled by gRPC.
const RENDERED_AHEAD: usize = 16;

fn stream<F, Fut>(serve: F) -> Response
where
    F: FnOnce(mpsc::Sender<Result<Bytes, Infallible>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = mpsc::channel::<Result<Bytes, Infallible>>(RENDERED_AHEAD);
    tokio::spawn(serve(tx));
    let mut resp = Response::new(Body::from_stream(
        tokio_stream::wrappers::ReceiverStream::new(rx),
    ));
    *resp.status_mut() = StatusCode::OK;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

/// The event type this watcher sees for a cached change, if it sees it at all.
fn event_type(e: &CacheEvent, filter: &Filter) -> Option<&'static str> {
    let now = filter.is_empty() || e.object.matches(filter);
    match e.kind {
        EventType::Added => now.then_some("ADDED"),
        EventType::Deleted => now.then_some("DELETED"),
        EventType::Modified => {
            let before = filter.is_empty() || e.prev.as_ref().is_some_and(|p| p.matches(filter));
            match (before, now) {
                (true, true) => Some("MODIFIED"),
                (false, true) => Some("ADDED"),
                (true, false) => Some("DELETED"),
                (false, false) => None,
            }
        }
    }
}

async fn serve_cached<K: Kind>(
    mut cw: CacheWatch,
    from: Option<i64>,
    mut p: Params,
    tx: mpsc::Sender<Result<Bytes, Infallible>>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    // Awaiting the client here is what makes a slow client fill its cache queue and get cut.
    let floor = from.unwrap_or(i64::MIN);
    let mut last = cw.rv;
    for e in std::mem::take(&mut cw.initial) {
        if let Some(kind) = event_type(&e, &p.filter) {
            let bytes = p
                .render
                .cached::<K>(kind, &e)
                .unwrap_or_else(|err| error_event(&err));
            if tx.send(Ok(bytes)).await.is_err() {
                return;
            }
        }
    }
    if p.send_initial && p.bookmarks && tx.send(Ok(bookmark::<K>(cw.rv, true))).await.is_err() {
        return;
    }
    let deadline = tokio::time::sleep(p.timeout);
    tokio::pin!(deadline);
    let mut tick = tokio::time::interval(BOOKMARK_EVERY);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tx.closed() => return,
            _ = shutdown.cancelled() => return,
            _ = &mut deadline => return,
            _ = tick.tick(), if p.bookmarks => {
                // Everything up to `last` has been sent once the queue is empty.
                if cw.rx.is_empty() && tx.send(Ok(bookmark::<K>(last, false))).await.is_err() {
                    return;
                }
            }
            next = cw.rx.recv() => match next {
                Some(e) => {
                    last = last.max(e.rv);
                    if e.rv <= floor {
                        continue;
                    }
                    if let Some(kind) = event_type(&e, &p.filter) {
                        let bytes = p.render.cached::<K>(kind, &e).unwrap_or_else(|err| error_event(&err));
                        if tx.send(Ok(bytes)).await.is_err() {
                            return;
                        }
                    }
                }
                None => {
                    if cw.cut.load(Ordering::Relaxed) {
                        let err = ApiError::too_many_requests(
                            "the watch fell too far behind and was stopped: watch again from the last resourceVersion received",
                        );
                        let _ = tx.send(Ok(error_event(&err))).await;
                    }
                    return;
                }
            },
        }
    }
}

/// A watch with a store watch of its own, for starting points the cache no longer holds.
async fn serve_from_store<K: Kind>(
    st: &State,
    ns: Option<&str>,
    from: Option<i64>,
    mut p: Params,
) -> ApiResult<Response> {
    let (initial, from): (Vec<K>, i64) = match from {
        None => {
            let (objs, rev, _) = list_objects::<K>(st, ns, &p.filter, &Query::default()).await?;
            (objs, rev)
        }
        Some(rv) => (Vec::new(), rv),
    };
    let start = prefix::<K>(ns);
    let end = prefix_end(start.as_bytes());
    let changes = st.store.watch(start.as_bytes(), &end, from + 1).await;
    let initial_events: Vec<Bytes> = initial.iter().map(|o| p.render.event("ADDED", o)).collect();
    let shutdown = st.shutdown.clone();
    Ok(stream(move |tx| async move {
        for e in initial_events {
            if tx.send(Ok(e)).await.is_err() {
                return;
            }
        }
        if p.send_initial && p.bookmarks && tx.send(Ok(bookmark::<K>(from, true))).await.is_err() {
            return;
        }
        let (mut changes, progress) = match changes {
            Ok(c) => c,
            Err(e) => {
                let err = match e {
                    StoreError::Compacted(c) => {
                        ApiError::gone(format!("too old resource version: {from} ({c})"))
                    }
                    other => ApiError::from(other),
                };
                let _ = tx.send(Ok(error_event(&err))).await;
                return;
            }
        };
        let deadline = tokio::time::sleep(p.timeout);
        tokio::pin!(deadline);
        let mut tick = tokio::time::interval(BOOKMARK_EVERY);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tx.closed() => return,
                _ = shutdown.cancelled() => return,
                _ = &mut deadline => return,
                _ = tick.tick(), if p.bookmarks => { progress.request(); }
                next = changes.next() => match next {
                    None => return,
                    Some(Err(e)) => {
                        let err = match e {
                            StoreError::Compacted(c) => ApiError::gone(format!("too old resource version: {from} ({c})")),
                            other => ApiError::from(other),
                        };
                        let _ = tx.send(Ok(error_event(&err))).await;
                        return;
                    }
                    Some(Ok(batch)) => {
                        for change in batch {
                            let out = match convert::<K>(&p.filter, &mut p.render, change) {
                                Ok(Some(b)) => b,
                                Ok(None) => continue,
                                Err(e) => error_event(&e),
                            };
                            if tx.send(Ok(out)).await.is_err() {
                                return;
                            }
                        }
                    }
                },
            }
        }
    }))
}

/// One store change as the watch event this watcher should see, if any.
fn convert<K: Kind>(
    filter: &Filter,
    render: &mut Render,
    change: Change,
) -> ApiResult<Option<Bytes>> {
    match change {
        Change::Put { item, prev } => {
            let obj: K = decode_item(&item)?;
            let now = filter.matches(&obj);
            let before = match &prev {
                Some(old) if !filter.is_empty() => filter.matches(&decode_item::<K>(old)?),
                Some(_) => true,
                None => false,
            };
            Ok(match (before, now) {
                (false, true) => Some(render.event("ADDED", &obj)),
                (true, true) => Some(render.event("MODIFIED", &obj)),
                (true, false) => Some(render.event("DELETED", &obj)),
                (false, false) => None,
            })
        }
        Change::Delete { revision, prev, .. } => {
            let Some(prev) = prev else { return Ok(None) };
            let obj: K = decode_stored(&prev.value, revision)?;
            Ok(filter.matches(&obj).then(|| render.event("DELETED", &obj)))
        }
        Change::Progress(rev) => Ok(Some(bookmark::<K>(rev, false))),
    }
}
