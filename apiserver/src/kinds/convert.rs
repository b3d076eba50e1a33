//! Serving a kind in a second API version. Upstream stores each resource in one version and
//! converts at the edge; here a [`Converted`] endpoint does the same in front of the stored
//! version's own endpoint (its strategy, store keys and watch cache): request bodies are
//! decoded as the served version and converted to the stored one; every object in a response
//! (single objects, lists, Table rows and watch events) is converted back. Patches apply to
//! the served representation: read, convert, patch, convert, then an update guarded by the
//! resourceVersion read, retried on conflicts as upstream's patcher does.

use std::convert::Infallible;
use std::marker::PhantomData;
use std::sync::Arc;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use futures::StreamExt;
use futures::future::BoxFuture;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::State;
use crate::errors::{ApiError, ApiResult};
use crate::handlers::{ApiRequest, Endpoint};
use crate::http::{JSON, Query};
use crate::patch::{self, PatchType};
use crate::registry::{Kind, ResourceInfo, Subresource};
use crate::request::{ResourcePath, Verb};

/// Attempts of a patch against concurrent writers before answering 409.
const PATCH_ATTEMPTS: usize = 16;
/// Longest watch line converted; the stored version's events are far smaller.
const MAX_EVENT: usize = 16 * 1024 * 1024;

/// A served version of a stored kind, and the conversions between them.
pub trait Conversion: Send + Sync + 'static {
    /// What clients send and get (e.g. autoscaling/v1 HorizontalPodAutoscaler).
    type Served: k8s_openapi::Resource
        + k8s_openapi::ListableResource
        + k8s_openapi::Metadata<Ty = ObjectMeta>
        + Serialize
        + DeserializeOwned
        + Send
        + 'static;
    /// What is stored, with the strategy (e.g. autoscaling/v2).
    type Stored: Kind;

    fn to_stored(served: Self::Served) -> ApiResult<Self::Stored>;
    fn from_stored(stored: Self::Stored) -> ApiResult<Self::Served>;
}

/// The endpoint of a served version; the stored version's endpoint does the work.
pub struct Converted<C> {
    info: ResourceInfo,
    _conversion: PhantomData<fn() -> C>,
}

impl<C: Conversion> Converted<C> {
    pub fn endpoint() -> Arc<dyn Endpoint> {
        use k8s_openapi::Resource;
        let served = (C::Served::GROUP, C::Served::VERSION, C::Served::KIND);
        let mut info = ResourceInfo::of::<C::Stored>();
        info.group = served.0;
        info.version = served.1;
        info.kind = served.2;
        info.plural = C::Served::URL_PATH_SEGMENT;
        info.subresources = <C::Stored as Kind>::SUBRESOURCES
            .iter()
            .map(|s| {
                let kind = match s {
                    Subresource::Status | Subresource::Finalize => served,
                    other => other.response_kind::<C::Stored>(),
                };
                (s.name(), s.verbs(), kind)
            })
            .collect();
        Arc::new(Converted::<C> {
            info,
            _conversion: PhantomData,
        })
    }
}

impl<C: Conversion> Endpoint for Converted<C> {
    fn info(&self) -> &ResourceInfo {
        &self.info
    }

    fn handle<'a>(
        &'a self,
        state: &'a State,
        req: ApiRequest,
    ) -> BoxFuture<'a, ApiResult<Response>> {
        Box::pin(handle::<C>(state, req))
    }

    /// The stored version's endpoint has the cache.
    fn start_cache(&self, _state: &State) {}
}

fn stored_endpoint<C: Conversion>(st: &State) -> ApiResult<Arc<dyn Endpoint>> {
    use k8s_openapi::Resource;
    st.registry
        .get(
            C::Stored::GROUP,
            C::Stored::VERSION,
            C::Stored::URL_PATH_SEGMENT,
        )
        .cloned()
        .ok_or_else(|| {
            ApiError::internal(format!(
                "{} is served in {} but its stored version {} is not registered",
                C::Stored::URL_PATH_SEGMENT,
                <C::Served as Resource>::API_VERSION,
                C::Stored::API_VERSION
            ))
        })
}

/// Whether a request on this subresource carries the kind itself (the main resource and
/// `/status` do; `/scale` carries a Scale).
fn carries_object(path: &ResourcePath) -> bool {
    matches!(path.subresource.as_deref(), None | Some("status"))
}

async fn handle<C: Conversion>(st: &State, req: ApiRequest) -> ApiResult<Response> {
    use k8s_openapi::Resource;
    let stored = stored_endpoint::<C>(st)?;
    let mut path = req.path.clone();
    path.group = C::Stored::GROUP.to_string();
    path.version = C::Stored::VERSION.to_string();
    let converts = carries_object(&req.path);
    match req.verb {
        Verb::Patch if converts => patch_served::<C>(st, stored.as_ref(), req, path).await,
        Verb::Create | Verb::Update if converts => {
            let value =
                crate::http::parse_body(&crate::http::content_type(&req.headers), &req.body)?;
            let (obj, warnings) = decode_served::<C>(value, &req.query)?;
            let inner = ApiRequest {
                path,
                headers: with_json_body(&req.headers),
                body: encode_stored::<C>(obj)?,
                ..req
            };
            let resp = stored.handle(st, inner).await?;
            convert_response::<C>(resp, &warnings).await
        }
        Verb::Watch => {
            let resp = stored.handle(st, ApiRequest { path, ..req }).await?;
            Ok(convert_watch::<C>(resp))
        }
        _ => {
            let resp = stored.handle(st, ApiRequest { path, ..req }).await?;
            convert_response::<C>(resp, &[]).await
        }
    }
}

/// The headers of a request whose body is now the stored version's JSON.
fn with_json_body(headers: &HeaderMap) -> HeaderMap {
    let mut h = headers.clone();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(JSON));
    h
}

/// Decodes a served-version body: apiVersion and kind must be the served ones; unknown fields
/// are an error under `fieldValidation=Strict` and warnings otherwise (unless `Ignore`).
fn decode_served<C: Conversion>(value: Value, q: &Query) -> ApiResult<(C::Served, Vec<String>)> {
    use k8s_openapi::Resource;
    let Some(map) = value.as_object() else {
        return Err(ApiError::bad_request(format!(
            "the body must be a {} object",
            C::Served::KIND
        )));
    };
    if let Some(av) = map.get("apiVersion").and_then(Value::as_str)
        && av != C::Served::API_VERSION
    {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({av}) does not match the expected API version ({})",
            C::Served::API_VERSION
        )));
    }
    if let Some(kind) = map.get("kind").and_then(Value::as_str)
        && kind != C::Served::KIND
    {
        return Err(ApiError::bad_request(format!(
            "the kind in the data ({kind}) does not match the expected kind ({})",
            C::Served::KIND
        )));
    }
    let obj: C::Served = serde_path_to_error::deserialize(&value).map_err(|e| {
        ApiError::bad_request(format!(
            "{} in version {:?} cannot be handled as a {}: {} (at {})",
            C::Served::KIND,
            C::Served::VERSION,
            C::Served::KIND,
            e.inner(),
            e.path()
        ))
    })?;
    let strictness = q.get("fieldValidation").unwrap_or("Warn");
    let mut warnings = Vec::new();
    if strictness != "Ignore" {
        let typed = serde_json::to_value(&obj).unwrap_or(Value::Null);
        let mut unknown = Vec::new();
        unknown_fields(&value, &typed, "", &mut unknown);
        let msgs: Vec<String> = unknown
            .iter()
            .map(|f| format!("unknown field {f:?}"))
            .collect();
        if !msgs.is_empty() && strictness == "Strict" {
            return Err(ApiError::bad_request(format!(
                "strict decoding error: {}",
                msgs.join(", ")
            )));
        }
        warnings = msgs;
    }
    Ok((obj, warnings))
}

/// Fields present in `input` that did not survive decoding into the typed object.
fn unknown_fields(input: &Value, typed: &Value, path: &str, out: &mut Vec<String>) {
    match (input, typed) {
        (Value::Object(i), Value::Object(t)) => {
            for (k, v) in i.iter().filter(|(_, v)| !v.is_null()) {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match t.get(k) {
                    None => out.push(p),
                    Some(tv) => unknown_fields(v, tv, &p, out),
                }
            }
        }
        (Value::Array(i), Value::Array(t)) => {
            for (n, (iv, tv)) in i.iter().zip(t).enumerate() {
                unknown_fields(iv, tv, &format!("{path}[{n}]"), out);
            }
        }
        _ => {}
    }
}

fn encode_stored<C: Conversion>(obj: C::Served) -> ApiResult<Bytes> {
    let stored = C::to_stored(obj)?;
    serde_json::to_vec(&stored)
        .map(Bytes::from)
        .map_err(|e| ApiError::internal(format!("cannot encode the stored object: {e}")))
}

/// A request to the stored endpoint made on the client's behalf (reads and the patch's write).
fn inner_request(
    method: Method,
    verb: Verb,
    path: ResourcePath,
    query: Query,
    headers: HeaderMap,
    body: Bytes,
) -> ApiRequest {
    ApiRequest {
        method,
        path,
        verb,
        query,
        headers,
        body,
        extensions: http::Extensions::new(),
    }
}

/// PATCH of the served version: apply the patch to the served form of the current object and
/// write the result with the resourceVersion it was read at.
async fn patch_served<C: Conversion>(
    st: &State,
    stored: &dyn Endpoint,
    req: ApiRequest,
    path: ResourcePath,
) -> ApiResult<Response> {
    use k8s_openapi::{Metadata, Resource};
    let kind = PatchType::from_content_type(&crate::http::content_type(&req.headers))?;
    let patch_body = crate::http::parse_body(
        if kind == PatchType::Apply {
            "application/apply-patch+yaml"
        } else {
            JSON
        },
        &req.body,
    )?;
    let name = req.path.name.clone().ok_or_else(ApiError::no_route)?;
    let main = ResourcePath {
        subresource: None,
        ..path.clone()
    };
    let mut read_headers = HeaderMap::new();
    read_headers.insert(header::ACCEPT, HeaderValue::from_static(JSON));
    for _ in 0..PATCH_ATTEMPTS {
        let get = inner_request(
            Method::GET,
            Verb::Get,
            main.clone(),
            Query::default(),
            read_headers.clone(),
            Bytes::new(),
        );
        let current = match stored.handle(st, get).await {
            Ok(resp) => body_json(resp).await?,
            // Server-side apply creates what is missing.
            Err(e)
                if e.code == 404 && kind == PatchType::Apply && req.path.subresource.is_none() =>
            {
                if req.query.get("fieldManager").is_none_or(str::is_empty) {
                    return Err(ApiError::bad_request(
                        "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
                    ));
                }
                let (mut obj, warnings) = decode_served::<C>(patch_body.clone(), &req.query)?;
                if obj.metadata().name.as_deref().is_some_and(|n| n != name) {
                    return Err(ApiError::bad_request(format!(
                        "the name of the object ({}) does not match the name on the URL ({name})",
                        obj.metadata().name.as_deref().unwrap_or("")
                    )));
                }
                obj.metadata_mut().name = Some(name.clone());
                let create = inner_request(
                    Method::POST,
                    Verb::Create,
                    ResourcePath {
                        name: None,
                        ..main.clone()
                    },
                    req.query.clone(),
                    with_json_body(&req.headers),
                    encode_stored::<C>(obj)?,
                );
                let resp = stored.handle(st, create).await?;
                return convert_response::<C>(resp, &warnings).await;
            }
            Err(e) => return Err(e),
        };
        let current: C::Stored = serde_json::from_value(current).map_err(|e| {
            ApiError::internal(format!(
                "cannot decode the current {}: {e}",
                C::Stored::KIND
            ))
        })?;
        let read_rv = current.metadata().resource_version.clone();
        let served = serde_json::to_value(C::from_stored(current)?)
            .map_err(|e| ApiError::internal(e.to_string()))?;
        let patched = patch::apply(kind, &served, &patch_body)?;
        let (obj, warnings) = decode_served::<C>(patched, &req.query)?;
        // A resourceVersion the patch itself sets is a precondition: no retry past it.
        let pinned = obj.metadata().resource_version != read_rv;
        let update = inner_request(
            Method::PUT,
            Verb::Update,
            path.clone(),
            req.query.clone(),
            with_json_body(&req.headers),
            encode_stored::<C>(obj)?,
        );
        match stored.handle(st, update).await {
            Err(e) if e.code == 409 && e.reason == "Conflict" && !pinned => continue,
            Err(e) => return Err(e),
            Ok(resp) => return convert_response::<C>(resp, &warnings).await,
        }
    }
    Err(ApiError::modified(
        C::Served::GROUP,
        C::Served::URL_PATH_SEGMENT,
        &name,
    ))
}

async fn body_json(resp: Response) -> ApiResult<Value> {
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .map_err(|e| ApiError::internal(format!("cannot read a response: {e}")))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::internal(format!("a response is not JSON: {e}")))
}

/// A stored object's JSON as the served version's.
fn object<C: Conversion>(v: Value) -> ApiResult<Value> {
    use k8s_openapi::Resource;
    let stored: C::Stored = serde_json::from_value(v).map_err(|e| {
        ApiError::internal(format!("cannot decode a stored {}: {e}", C::Stored::KIND))
    })?;
    serde_json::to_value(C::from_stored(stored)?).map_err(|e| ApiError::internal(e.to_string()))
}

/// Converts whatever a response holds: an object, a list, or a Table whose rows carry objects.
fn convert_value<C: Conversion>(v: &mut Value) -> ApiResult<()> {
    use k8s_openapi::{ListableResource, Resource};
    let kind = v
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if kind == C::Stored::KIND {
        *v = object::<C>(v.take())?;
    } else if kind == C::Stored::LIST_KIND {
        v["apiVersion"] = Value::from(C::Served::API_VERSION);
        v["kind"] = Value::from(C::Served::LIST_KIND);
        if let Some(items) = v.get_mut("items").and_then(Value::as_array_mut) {
            for item in items {
                *item = object::<C>(item.take())?;
            }
        }
    } else if kind == "Table"
        && let Some(rows) = v.get_mut("rows").and_then(Value::as_array_mut)
    {
        for row in rows {
            if let Some(o) = row.get_mut("object")
                && o.get("kind").and_then(Value::as_str) == Some(C::Stored::KIND)
            {
                *o = object::<C>(o.take())?;
            }
        }
    }
    Ok(())
}

async fn convert_response<C: Conversion>(
    resp: Response,
    warnings: &[String],
) -> ApiResult<Response> {
    if !resp.status().is_success() {
        return Ok(resp);
    }
    let (parts, body) = resp.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .map_err(|e| ApiError::internal(format!("cannot read a response: {e}")))?;
    let mut v: Value = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::internal(format!("a response is not JSON: {e}")))?;
    convert_value::<C>(&mut v)?;
    let mut out = crate::http::json_response(parts.status, &v);
    for w in parts.headers.get_all("Warning") {
        out.headers_mut().append("Warning", w.clone());
    }
    for w in warnings {
        if let Ok(v) = HeaderValue::from_str(&format!("299 - {w:?}")) {
            out.headers_mut().append("Warning", v);
        }
    }
    Ok(out)
}

/// One watch event line, converted.
fn convert_line<C: Conversion>(line: &[u8]) -> Bytes {
    use k8s_openapi::Resource;
    let converted = serde_json::from_slice::<Value>(line)
        .map_err(|e| ApiError::internal(format!("a watch event is not JSON: {e}")))
        .and_then(|mut event| {
            match event.get("type").and_then(Value::as_str) {
                Some("ERROR") => {}
                Some("BOOKMARK") => {
                    event["object"]["apiVersion"] = Value::from(C::Served::API_VERSION);
                }
                _ => {
                    if let Some(o) = event.get_mut("object") {
                        convert_value::<C>(o)?;
                    }
                }
            }
            Ok(event)
        })
        .unwrap_or_else(|e| serde_json::json!({"type": "ERROR", "object": e.status()}));
    let mut out = serde_json::to_vec(&converted).unwrap_or_default();
    out.push(b'\n');
    Bytes::from(out)
}

/// A watch stream whose events are converted line by line as they come.
fn convert_watch<C: Conversion>(resp: Response) -> Response {
    if !resp.status().is_success() {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    struct Lines {
        inner: axum::body::BodyDataStream,
        buf: Vec<u8>,
        done: bool,
    }
    let state = Lines {
        inner: body.into_data_stream(),
        buf: Vec::new(),
        done: false,
    };
    let events = futures::stream::unfold(state, |mut s| async move {
        loop {
            if let Some(pos) = s.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = s.buf.drain(..=pos).collect();
                return Some((Ok::<Bytes, Infallible>(convert_line::<C>(&line)), s));
            }
            if s.done {
                return None;
            }
            match s.inner.next().await {
                Some(Ok(chunk)) => {
                    s.buf.extend_from_slice(&chunk);
                    if s.buf.len() > MAX_EVENT {
                        s.done = true;
                        s.buf.clear();
                        let err = ApiError::internal("a watch event is too large to convert");
                        let mut out = serde_json::to_vec(
                            &serde_json::json!({"type": "ERROR", "object": err.status()}),
                        )
                        .unwrap_or_default();
                        out.push(b'\n');
                        return Some((Ok(Bytes::from(out)), s));
                    }
                }
                Some(Err(_)) | None => s.done = true,
            }
        }
    });
    let mut out = Response::from_parts(parts, Body::from_stream(events));
    *out.status_mut() = StatusCode::OK;
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinds::hpa::V1;
    use serde_json::json;

    fn v2_hpa(rv: &str) -> Value {
        json!({
            "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "web", "namespace": "default", "resourceVersion": rv},
            "spec": {"maxReplicas": 3, "minReplicas": 1,
                     "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                     "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 60}}}]}
        })
    }

    #[test]
    fn objects_lists_and_table_rows_are_converted() {
        let mut one = v2_hpa("5");
        convert_value::<V1>(&mut one).unwrap();
        assert_eq!(one["apiVersion"], "autoscaling/v1");
        assert_eq!(one["spec"]["targetCPUUtilizationPercentage"], 60);
        assert_eq!(one["metadata"]["resourceVersion"], "5");

        let mut list = json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscalerList",
            "metadata": {"resourceVersion": "9"}, "items": [v2_hpa("5"), v2_hpa("6")]});
        convert_value::<V1>(&mut list).unwrap();
        assert_eq!(list["apiVersion"], "autoscaling/v1");
        assert_eq!(list["items"][1]["apiVersion"], "autoscaling/v1");
        assert_eq!(
            list["items"][1]["spec"]["targetCPUUtilizationPercentage"],
            60
        );

        let mut table = json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "rows": [
            {"cells": ["web"], "object": v2_hpa("5")},
            {"cells": ["web"], "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": {"name": "web"}}}]});
        convert_value::<V1>(&mut table).unwrap();
        assert_eq!(table["rows"][0]["object"]["apiVersion"], "autoscaling/v1");
        assert_eq!(table["rows"][1]["object"]["kind"], "PartialObjectMetadata");

        let mut status = json!({"kind": "Status", "apiVersion": "v1", "status": "Success"});
        let before = status.clone();
        convert_value::<V1>(&mut status).unwrap();
        assert_eq!(status, before);
    }

    #[test]
    fn watch_lines_are_converted() {
        let added = json!({"type": "ADDED", "object": v2_hpa("7")}).to_string();
        let out: Value = serde_json::from_slice(&convert_line::<V1>(added.as_bytes())).unwrap();
        assert_eq!(out["type"], "ADDED");
        assert_eq!(out["object"]["apiVersion"], "autoscaling/v1");
        let bookmark = json!({"type": "BOOKMARK", "object": {"kind": "HorizontalPodAutoscaler", "apiVersion": "autoscaling/v2", "metadata": {"resourceVersion": "8"}}}).to_string();
        let out: Value = serde_json::from_slice(&convert_line::<V1>(bookmark.as_bytes())).unwrap();
        assert_eq!(out["object"]["apiVersion"], "autoscaling/v1");
        assert_eq!(out["object"]["metadata"]["resourceVersion"], "8");
        let out: Value = serde_json::from_slice(&convert_line::<V1>(b"not json\n")).unwrap();
        assert_eq!(out["type"], "ERROR");
    }

    #[test]
    fn served_bodies_are_checked_strictly() {
        let strict = Query::parse(Some("fieldValidation=Strict"));
        let body = json!({"apiVersion": "autoscaling/v1", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "web"},
            "spec": {"maxReplicas": 2, "scaleTargetRef": {"kind": "Deployment", "name": "web"}, "targetCPUUtilizationPercentag": 5}});
        let err = decode_served::<V1>(body.clone(), &strict).unwrap_err();
        assert_eq!(err.code, 400);
        assert!(
            err.message.contains("spec.targetCPUUtilizationPercentag"),
            "{}",
            err.message
        );
        let (_, warnings) = decode_served::<V1>(body, &Query::default()).unwrap();
        assert_eq!(warnings.len(), 1);
        let wrong = json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler"});
        assert_eq!(decode_served::<V1>(wrong, &strict).unwrap_err().code, 400);
    }

    #[test]
    fn discovery_names_the_served_version() {
        let ep = Converted::<V1>::endpoint();
        let info = ep.info();
        assert_eq!(
            (info.group, info.version, info.kind),
            ("autoscaling", "v1", "HorizontalPodAutoscaler")
        );
        assert_eq!(info.plural, "horizontalpodautoscalers");
        assert_eq!(info.short_names, &["hpa"]);
        assert_eq!(info.subresources[0].0, "status");
        assert_eq!(
            info.subresources[0].2,
            ("autoscaling", "v1", "HorizontalPodAutoscaler")
        );
    }
}
