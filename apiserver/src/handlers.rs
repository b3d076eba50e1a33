//! The verbs every resource shares (get, list, create, update, patch, delete, deletecollection),
//! written once over [`Kind`]: decode and check the body, apply the kind's strategy, write to the
//! store with optimistic concurrency, and answer with the object, a list or a Table.

use std::marker::PhantomData;
use std::sync::{Arc, OnceLock};

use axum::response::Response;
use base64::Engine;
use bytes::Bytes;
use futures::future::BoxFuture;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde_json::{Value, json};

use crate::cache::{Cached, Cacher, Freshness};
use crate::errors::{ApiError, ApiResult, FieldError};
use crate::http::{Query, Wanted, json_response, wanted};
use crate::managed_fields::{self, Manager, Operation};
use crate::patch::{self, PatchType};
use crate::registry::{DeleteDecision, Kind, ResourceInfo, Subresource};
use crate::request::{ResourcePath, Verb};
use crate::storage::{Etcd, Item, StoreError, Txn, Write, prefix_end};
use crate::validation;
use crate::{State, table};

/// One API request, parsed.
pub struct ApiRequest {
    pub method: Method,
    pub path: ResourcePath,
    pub verb: Verb,
    pub query: Query,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The request's extensions: a connection upgrade (exec) is taken from here.
    pub extensions: http::Extensions,
}

impl ApiRequest {
    pub fn wanted(&self) -> Wanted {
        wanted(&self.headers)
    }

    pub fn dry_run(&self) -> bool {
        self.query.get("dryRun") == Some("All")
    }

    fn content_type(&self) -> String {
        crate::http::content_type(&self.headers)
    }

    /// Who this write is recorded under in managedFields.
    pub fn manager(&self, operation: Operation, sub: Option<Subresource>) -> ApiResult<Manager> {
        Manager::of_request(
            self.query.get("fieldManager"),
            self.headers
                .get(http::header::USER_AGENT)
                .and_then(|v| v.to_str().ok()),
            operation,
            sub.map(Subresource::name),
        )
    }
}

/// A resource the server routes requests to.
pub trait Endpoint: Send + Sync {
    fn info(&self) -> &ResourceInfo;
    fn handle<'a>(
        &'a self,
        state: &'a State,
        req: ApiRequest,
    ) -> BoxFuture<'a, ApiResult<Response>>;
    /// Starts the resource's watch cache, so it buffers changes from the start.
    fn start_cache(&self, state: &State);
}

/// The [`Endpoint`] of a [`Kind`], with its watch cache.
pub struct Typed<K> {
    info: ResourceInfo,
    cache: OnceLock<Arc<Cacher<K>>>,
    _kind: PhantomData<fn() -> K>,
}

impl<K: Kind> Typed<K> {
    pub fn endpoint() -> Arc<dyn Endpoint> {
        Arc::new(Typed::<K> {
            info: ResourceInfo::of::<K>(),
            cache: OnceLock::new(),
            _kind: PhantomData,
        })
    }

    /// The resource's watch cache, started on first use.
    pub fn cache(&self, st: &State) -> &Arc<Cacher<K>> {
        self.cache.get_or_init(|| {
            Cacher::start(st.store.clone(), st.watch_cache_size, st.shutdown.clone())
        })
    }
}

impl<K: Kind> Endpoint for Typed<K> {
    fn info(&self) -> &ResourceInfo {
        &self.info
    }

    fn handle<'a>(
        &'a self,
        state: &'a State,
        req: ApiRequest,
    ) -> BoxFuture<'a, ApiResult<Response>> {
        Box::pin(dispatch::<K>(self, state, req))
    }

    fn start_cache(&self, state: &State) {
        self.cache(state);
    }
}

async fn dispatch<K: Kind>(ep: &Typed<K>, st: &State, req: ApiRequest) -> ApiResult<Response> {
    if K::NAMESPACED
        && req.path.namespace.is_none()
        && !matches!(req.verb, Verb::List | Verb::Watch)
    {
        return Err(ApiError::no_route());
    }
    if !K::NAMESPACED && req.path.namespace.is_some() {
        return Err(ApiError::no_route());
    }
    let sub = match req.path.subresource.as_deref() {
        None => None,
        Some(s) => Some(
            K::SUBRESOURCES
                .iter()
                .copied()
                .find(|x| x.name() == s)
                .ok_or_else(ApiError::no_route)?,
        ),
    };
    match (req.verb, sub) {
        (Verb::Get, None | Some(Subresource::Status)) => get::<K>(st, &req).await,
        (Verb::List, None) => list::<K>(ep, st, &req).await,
        (Verb::Watch, None) => crate::watch::watch::<K>(ep, st, &req).await,
        (Verb::Create, None) => create::<K>(st, &req).await,
        (Verb::Update, None | Some(Subresource::Status | Subresource::Finalize)) => {
            update::<K>(st, &req, sub).await
        }
        (Verb::Patch, None | Some(Subresource::Status)) => patch::<K>(st, &req, sub).await,
        (Verb::Delete, None) => delete::<K>(st, &req).await,
        (Verb::DeleteCollection, None) => delete_collection::<K>(st, &req).await,
        (Verb::Get, Some(Subresource::Scale)) => get_scale::<K>(st, &req).await,
        (Verb::Update | Verb::Patch, Some(Subresource::Scale)) => update_scale::<K>(st, &req).await,
        (Verb::Create, Some(Subresource::Binding)) => crate::kinds::pod::bind(st, &req).await,
        (Verb::Create, Some(Subresource::Eviction)) => crate::kinds::pod::evict(st, &req).await,
        (Verb::Get, Some(Subresource::Log)) => crate::node_proxy::log(st, req).await,
        (Verb::Get | Verb::Create, Some(Subresource::Exec)) => {
            crate::node_proxy::exec(st, req).await
        }
        (verb, _) => Err(ApiError::method_not_allowed(format!(
            "{verb:?} is not supported on {}{}",
            K::URL_PATH_SEGMENT,
            sub.map(|s| format!("/{}", s.name())).unwrap_or_default()
        ))),
    }
}

// ---------------------------------------------------------------------------------------------
// Keys and codec

/// The store key of one object.
pub fn key<K: Kind>(namespace: Option<&str>, name: &str) -> String {
    match namespace.filter(|_| K::NAMESPACED) {
        Some(ns) => format!("/registry/{}/{ns}/{name}", K::URL_PATH_SEGMENT),
        None => format!("/registry/{}/{name}", K::URL_PATH_SEGMENT),
    }
}

/// The key prefix of a list (one namespace, or all).
pub fn prefix<K: Kind>(namespace: Option<&str>) -> String {
    match namespace.filter(|_| K::NAMESPACED) {
        Some(ns) => format!("/registry/{}/{ns}/", K::URL_PATH_SEGMENT),
        None => format!("/registry/{}/", K::URL_PATH_SEGMENT),
    }
}

/// A stored object, with its resourceVersion set from the store.
pub fn decode_item<K: Kind>(item: &Item) -> ApiResult<K> {
    decode_stored(&item.value, item.mod_revision)
}

pub fn decode_stored<K: Kind>(bytes: &[u8], revision: i64) -> ApiResult<K> {
    let mut obj: K = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::internal(format!("stored {} cannot be decoded: {e}", K::KIND)))?;
    obj.metadata_mut().resource_version = Some(revision.to_string());
    Ok(obj)
}

/// The bytes stored for an object: its JSON without resourceVersion (the store's revision is).
pub fn encode<K: Kind>(obj: &K) -> ApiResult<Vec<u8>> {
    let mut obj = obj.clone();
    obj.metadata_mut().resource_version = None;
    serde_json::to_vec(&obj)
        .map_err(|e| ApiError::internal(format!("cannot encode {}: {e}", K::KIND)))
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Compacted(_) => {
                ApiError::gone("The resourceVersion for the provided list is too old.")
            }
            StoreError::FutureRevision => ApiError::timeout("Too large resource version"),
            StoreError::Unavailable(m) => {
                ApiError::unavailable(format!("the store is unavailable: {m}"))
            }
            StoreError::Other(m) => ApiError::internal(m),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Decoding request bodies

/// How strictly unknown fields in a body are treated (`fieldValidation=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldValidation {
    Strict,
    Warn,
    Ignore,
}

fn field_validation(q: &Query) -> ApiResult<FieldValidation> {
    match q.get("fieldValidation") {
        None | Some("") | Some("Warn") => Ok(FieldValidation::Warn),
        Some("Strict") => Ok(FieldValidation::Strict),
        Some("Ignore") => Ok(FieldValidation::Ignore),
        Some(other) => Err(ApiError::bad_request(format!(
            "fieldValidation must be one of Strict, Warn, Ignore; got {other:?}"
        ))),
    }
}

/// Turns a JSON value into a `K`, checking apiVersion and kind and reporting unknown fields
/// (an error under `Strict`, warnings under `Warn`).
pub fn decode_value<K: Kind>(
    value: Value,
    validation: FieldValidation,
) -> ApiResult<(K, Vec<String>)> {
    let Some(map) = value.as_object() else {
        return Err(ApiError::bad_request(format!(
            "the body must be a {} object",
            K::KIND
        )));
    };
    if let Some(av) = map.get("apiVersion").and_then(Value::as_str)
        && av != K::API_VERSION
    {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({av}) does not match the expected API version ({})",
            K::API_VERSION
        )));
    }
    if let Some(kind) = map.get("kind").and_then(Value::as_str)
        && kind != K::KIND
    {
        return Err(ApiError::bad_request(format!(
            "the kind in the data ({kind}) does not match the expected kind ({})",
            K::KIND
        )));
    }
    let obj: K = serde_path_to_error::deserialize(&value).map_err(|e| {
        ApiError::bad_request(format!(
            "{} in version {:?} cannot be handled as a {}: {} (at {})",
            K::KIND,
            K::VERSION,
            K::KIND,
            e.inner(),
            e.path()
        ))
    })?;
    let mut warnings = Vec::new();
    if validation != FieldValidation::Ignore {
        let typed = serde_json::to_value(&obj).unwrap_or(Value::Null);
        let mut unknown = Vec::new();
        unknown_fields(&value, &typed, "", &mut unknown);
        if !unknown.is_empty() {
            let msgs: Vec<String> = unknown
                .iter()
                .map(|f| format!("unknown field {f:?}"))
                .collect();
            if validation == FieldValidation::Strict {
                return Err(ApiError::bad_request(format!(
                    "strict decoding error: {}",
                    msgs.join(", ")
                )));
            }
            warnings = msgs;
        }
    }
    Ok((obj, warnings))
}

/// Fields present in `input` that did not survive decoding into the typed object.
fn unknown_fields(input: &Value, typed: &Value, path: &str, out: &mut Vec<String>) {
    match (input, typed) {
        (Value::Object(i), Value::Object(t)) => {
            for (k, v) in i {
                if v.is_null() {
                    continue;
                }
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

fn decode_body<K: Kind>(req: &ApiRequest) -> ApiResult<(K, Vec<String>)> {
    let ct = req.content_type();
    let value = crate::http::parse_body(&ct, &req.body)?;
    decode_value(value, field_validation(&req.query)?)
}

// ---------------------------------------------------------------------------------------------
// Responses

/// Answers with one object (or a one-row Table), adding `Warning` headers.
pub fn respond<K: Kind>(
    req: &ApiRequest,
    code: StatusCode,
    obj: &K,
    warnings: &[String],
) -> Response {
    let mut resp = match req.wanted() {
        Wanted::Table => {
            let rv = obj.metadata().resource_version.clone().unwrap_or_default();
            let include = table::IncludeObject::parse(req.query.get("includeObject"));
            json_response(
                code,
                &table::build(std::slice::from_ref(obj), &rv, include, true),
            )
        }
        Wanted::Object => json_response(code, obj),
    };
    for w in warnings {
        if let Ok(v) = HeaderValue::from_str(&format!("299 - {:?}", w)) {
            resp.headers_mut().append("Warning", v);
        }
    }
    resp
}

// ---------------------------------------------------------------------------------------------
// Verbs

fn name_of(req: &ApiRequest) -> ApiResult<&str> {
    req.path.name.as_deref().ok_or_else(ApiError::no_route)
}

/// Reads one object; 404 if it does not exist.
pub async fn read<K: Kind>(store: &Etcd, ns: Option<&str>, name: &str) -> ApiResult<(K, i64)> {
    let (item, _) = store.get(&key::<K>(ns, name)).await?;
    let item = item.ok_or_else(|| ApiError::not_found(K::GROUP, K::URL_PATH_SEGMENT, name))?;
    Ok((decode_item(&item)?, item.mod_revision))
}

async fn get<K: Kind>(st: &State, req: &ApiRequest) -> ApiResult<Response> {
    let (obj, _) = read::<K>(&st.store, req.path.namespace.as_deref(), name_of(req)?).await?;
    Ok(respond(req, StatusCode::OK, &obj, &[]))
}

/// Label and field selectors of a list or watch, checked against the kind's fields.
pub struct Filter {
    labels: miniorch_api::selector::LabelQuery,
    fields: miniorch_api::selector::FieldQuery,
}

impl Filter {
    pub fn from_query<K: Kind>(q: &Query) -> ApiResult<Self> {
        use miniorch_api::selector::{FieldQuery, LabelQuery};
        let labels = LabelQuery::parse(q.get("labelSelector").unwrap_or(""))
            .map_err(|e| ApiError::bad_request(format!("invalid labelSelector: {e}")))?;
        let fields = FieldQuery::parse(q.get("fieldSelector").unwrap_or(""))
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        let mut supported = vec!["metadata.name", "metadata.namespace"];
        supported.extend_from_slice(K::FIELDS);
        fields
            .check_fields(&supported)
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        Ok(Filter { labels, fields })
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty() && self.fields.is_empty()
    }

    pub fn matches<K: Kind>(&self, obj: &K) -> bool {
        let meta = obj.metadata();
        self.matches_parts(meta.labels.as_ref(), |f| match f {
            "metadata.name" => meta.name.clone(),
            "metadata.namespace" => meta.namespace.clone(),
            other => obj.field(other),
        })
    }

    /// Matches labels and fields however the caller has them (typed, or cached).
    pub fn matches_parts(
        &self,
        labels: Option<&std::collections::BTreeMap<String, String>>,
        field: impl Fn(&str) -> Option<String>,
    ) -> bool {
        self.labels.matches(labels) && self.fields.matches(field)
    }
}

/// The continue token of a paginated list: where to resume, at which revision.
fn encode_continue(rv: i64, next_key: &[u8]) -> String {
    let body = json!({"v": "meta.k8s.io/v1", "rv": rv, "start": String::from_utf8_lossy(next_key)});
    base64::engine::general_purpose::URL_SAFE.encode(body.to_string())
}

fn decode_continue(token: &str, prefix: &str) -> ApiResult<(i64, Vec<u8>)> {
    let bad = || {
        ApiError::bad_request(
            "continue key is not valid: send the token from the previous list response",
        )
    };
    let raw = base64::engine::general_purpose::URL_SAFE
        .decode(token)
        .map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&raw).map_err(|_| bad())?;
    let rv = v["rv"].as_i64().filter(|r| *r > 0).ok_or_else(bad)?;
    let start = v["start"].as_str().ok_or_else(bad)?;
    if !start.starts_with(prefix) {
        return Err(bad());
    }
    Ok((rv, start.as_bytes().to_vec()))
}

/// Objects of a list request and the revision they were read at; `continue` if more remain.
pub async fn list_objects<K: Kind>(
    st: &State,
    ns: Option<&str>,
    filter: &Filter,
    q: &Query,
) -> ApiResult<(Vec<K>, i64, Option<String>)> {
    let prefix = prefix::<K>(ns);
    let end = prefix_end(prefix.as_bytes());
    let limit = q.int("limit")?.filter(|l| *l > 0);
    let (mut revision, mut start) = match q.get("continue").filter(|c| !c.is_empty()) {
        Some(token) => decode_continue(token, &prefix)?,
        None => {
            let exact = q.get("resourceVersionMatch") == Some("Exact");
            let rv = match q.get("resourceVersion") {
                Some(v) if exact && !v.is_empty() => v
                    .parse::<i64>()
                    .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {v:?}")))?,
                _ => 0,
            };
            (rv, prefix.as_bytes().to_vec())
        }
    };
    // A metadata.name field selector in one namespace is a single key.
    if let (Some(name), true) = (
        filter.fields.required("metadata.name"),
        K::NAMESPACED == ns.is_some(),
    ) && limit.is_none()
    {
        let k = key::<K>(ns, name);
        let page = st.store.range(k.as_bytes(), &[], revision, 0).await?;
        let objs = page
            .items
            .iter()
            .map(decode_item::<K>)
            .collect::<ApiResult<Vec<K>>>()?
            .into_iter()
            .filter(|o| filter.matches(o))
            .collect();
        return Ok((objs, page.revision, None));
    }
    let mut out = Vec::new();
    // Read in chunks at one revision until the limit is filled with matching objects.
    let chunk = limit.map(|l| l.max(100)).unwrap_or(0);
    loop {
        let page = st.store.range(&start, &end, revision, chunk).await?;
        if revision == 0 {
            revision = page.revision;
        }
        let last_key = page.items.last().map(|i| i.key.clone());
        for item in &page.items {
            let obj: K = decode_item(item)?;
            if filter.matches(&obj) {
                out.push(obj);
                if limit.is_some_and(|l| out.len() as i64 >= l) {
                    let more_here = item.key != *last_key.as_ref().unwrap_or(&item.key);
                    if more_here || page.more {
                        let mut next = item.key.clone();
                        next.push(0);
                        return Ok((out, revision, Some(encode_continue(revision, &next))));
                    }
                    return Ok((out, revision, None));
                }
            }
        }
        match (page.more, last_key) {
            (true, Some(mut k)) => {
                k.push(0);
                start = k;
            }
            _ => return Ok((out, revision, None)),
        }
    }
}

/// How fresh a list or watch must be, from its `resourceVersion` parameters; `None` when only the
/// store can answer (an exact revision, or a continued list).
pub fn freshness(q: &Query) -> ApiResult<Option<Freshness>> {
    if q.get("continue").is_some_and(|c| !c.is_empty())
        || q.get("resourceVersionMatch") == Some("Exact")
    {
        return Ok(None);
    }
    Ok(Some(match q.get("resourceVersion") {
        None | Some("") => Freshness::Latest,
        Some("0") => Freshness::Any,
        Some(v) => Freshness::AtLeast(v.parse().map_err(|_| {
            ApiError::bad_request(format!("invalid resourceVersion {v:?}: must be an integer"))
        })?),
    }))
}

async fn list<K: Kind>(ep: &Typed<K>, st: &State, req: &ApiRequest) -> ApiResult<Response> {
    let filter = Filter::from_query::<K>(&req.query)?;
    let ns = req.path.namespace.as_deref();
    if let Some(fresh) = freshness(&req.query)?
        && let Some((mut items, rv)) = ep.cache(st).list(ns, &filter, fresh).await
    {
        let mut cont = None;
        if let Some(limit) = req
            .query
            .int("limit")?
            .filter(|l| *l > 0)
            .map(|l| l as usize)
            && items.len() > limit
        {
            let mut next = items[limit - 1].key.clone();
            next.push(0);
            cont = Some(encode_continue(rv, &next));
            items.truncate(limit);
        }
        return cached_list_response::<K>(req, &items, rv, cont);
    }
    let (objs, rev, cont) = list_objects::<K>(st, ns, &filter, &req.query).await?;
    list_response(req, &objs, rev, cont)
}

fn list_response<K: Kind>(
    req: &ApiRequest,
    objs: &[K],
    rev: i64,
    cont: Option<String>,
) -> ApiResult<Response> {
    let rv = rev.to_string();
    if req.wanted() == Wanted::Table {
        let include = table::IncludeObject::parse(req.query.get("includeObject"));
        let mut t = table::build(objs, &rv, include, true);
        if let Some(c) = cont {
            t["metadata"]["continue"] = json!(c);
        }
        return Ok(json_response(StatusCode::OK, &t));
    }
    let mut metadata = json!({ "resourceVersion": rv });
    if let Some(c) = cont {
        metadata["continue"] = json!(c);
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "kind": K::LIST_KIND,
            "apiVersion": K::API_VERSION,
            "metadata": metadata,
            "items": objs,
        }),
    ))
}

/// A list from the cache: the objects' JSON is already encoded, so it is only joined.
fn cached_list_response<K: Kind>(
    req: &ApiRequest,
    items: &[Arc<Cached>],
    rev: i64,
    cont: Option<String>,
) -> ApiResult<Response> {
    if req.wanted() == Wanted::Table {
        let objs = items
            .iter()
            .map(|c| c.object::<K>())
            .collect::<ApiResult<Vec<K>>>()?;
        return list_response(req, &objs, rev, cont);
    }
    let mut metadata = json!({ "resourceVersion": rev.to_string() });
    if let Some(c) = cont {
        metadata["continue"] = json!(c);
    }
    let head = json!({"kind": K::LIST_KIND, "apiVersion": K::API_VERSION, "metadata": metadata});
    let mut body = serde_json::to_vec(&head).map_err(|e| ApiError::internal(e.to_string()))?;
    body.pop(); // the closing brace: items follow
    body.extend_from_slice(b",\"items\":[");
    for (i, c) in items.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(&c.json);
    }
    body.extend_from_slice(b"]}");
    Ok(crate::http::bytes_response(
        StatusCode::OK,
        crate::http::JSON,
        body,
    ))
}

/// Checks that namespace `ns` exists and accepts new objects.
async fn check_namespace(st: &State, ns: &str) -> ApiResult<()> {
    let (item, _) = st.store.get(&format!("/registry/namespaces/{ns}")).await?;
    let Some(item) = item else {
        return Err(ApiError::not_found("", "namespaces", ns));
    };
    let namespace: k8s_openapi::api::core::v1::Namespace = decode_item(&item)?;
    if namespace.metadata.deletion_timestamp.is_some() {
        return Err(ApiError::forbidden(format!(
            "unable to create new content in namespace {ns} because it is being terminated"
        )));
    }
    Ok(())
}

const GENERATE_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// Create: the shared path for POST and for PATCH/PUT that create.
pub async fn create_object<K: Kind>(
    st: &State,
    ns: Option<&str>,
    mut obj: K,
    dry_run: bool,
    manager: &Manager,
) -> ApiResult<K> {
    let meta = obj.metadata_mut();
    if K::NAMESPACED {
        let ns = ns.ok_or_else(ApiError::no_route)?;
        match meta.namespace.as_deref() {
            Some(given) if !given.is_empty() && given != ns => {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            _ => meta.namespace = Some(ns.to_string()),
        }
    } else {
        meta.namespace = None;
    }
    if meta.name.as_deref().unwrap_or("").is_empty()
        && let Some(base) = meta.generate_name.as_deref().filter(|g| !g.is_empty())
    {
        use rand::Rng;
        let mut rng = rand::rng();
        let suffix: String = (0..5)
            .map(|_| GENERATE_ALPHABET[rng.random_range(0..GENERATE_ALPHABET.len())] as char)
            .collect();
        let base = if base.len() > 58 { &base[..58] } else { base };
        meta.name = Some(format!("{base}{suffix}"));
    }
    meta.uid = Some(uuid::Uuid::new_v4().to_string());
    meta.creation_timestamp = Some(now());
    meta.resource_version = None;
    meta.deletion_timestamp = None;
    meta.deletion_grace_period_seconds = None;
    meta.generation = K::TRACKS_GENERATION.then_some(1);
    obj.prepare_for_create();
    obj.apply_defaults();
    // An apply has recorded its own fields already.
    if manager.operation == Operation::Update {
        managed_fields::record_update(None, &mut obj, manager)?;
    }
    let name = obj.metadata().name.clone().unwrap_or_default();
    let mut errors = validation::object_meta::<K>(obj.metadata());
    errors.extend(obj.validate());
    if !errors.is_empty() {
        return Err(ApiError::invalid(K::GROUP, K::KIND, &name, &errors));
    }
    if K::NAMESPACED {
        check_namespace(st, obj.metadata().namespace.as_deref().unwrap_or("")).await?;
    }
    let key = key::<K>(obj.metadata().namespace.as_deref(), &name);
    // What the client asked to hold; anything else held was picked here and may be re-picked.
    let requested = obj.held_keys();
    for _ in 0..16 {
        let mut candidate = obj.clone();
        candidate.allocate(st, None).await?;
        let errors = candidate.validate();
        if !errors.is_empty() {
            return Err(ApiError::invalid(K::GROUP, K::KIND, &name, &errors));
        }
        if dry_run {
            // A dry run still answers what the write would: taken names and allocations.
            if st.store.get(&key).await?.0.is_some() {
                return Err(ApiError::already_exists(
                    K::GROUP,
                    K::URL_PATH_SEGMENT,
                    &name,
                ));
            }
            return Ok(candidate);
        }
        let held = candidate.held_keys();
        let mut txn = Txn::new(&key).absent(&key).put(&key, encode(&candidate)?);
        for h in &held {
            txn = txn.absent(h).put(h, key.clone().into_bytes());
        }
        match st.store.commit(txn).await? {
            Write::Done(rev) => {
                candidate.metadata_mut().resource_version = Some(rev.to_string());
                return Ok(candidate);
            }
            Write::Conflict(Some(_)) => {
                return Err(ApiError::already_exists(
                    K::GROUP,
                    K::URL_PATH_SEGMENT,
                    &name,
                ));
            }
            Write::Conflict(None) => {
                let taken = st.store.existing(&held).await?;
                let asked: Vec<FieldError> = taken
                    .iter()
                    .filter(|k| requested.contains(k))
                    .map(|k| candidate.held_key_taken(k))
                    .collect();
                if !asked.is_empty() {
                    return Err(ApiError::invalid(K::GROUP, K::KIND, &name, &asked));
                }
                // Another create took what we picked in the meantime: pick again.
            }
        }
    }
    Err(ApiError::internal(format!(
        "could not allocate what {} {name:?} needs: try again",
        K::KIND
    )))
}

async fn create<K: Kind>(st: &State, req: &ApiRequest) -> ApiResult<Response> {
    let (obj, warnings) = decode_body::<K>(req)?;
    let manager = req.manager(Operation::Update, None)?;
    let obj = create_object(
        st,
        req.path.namespace.as_deref(),
        obj,
        req.dry_run(),
        &manager,
    )
    .await?;
    Ok(respond(req, StatusCode::CREATED, &obj, &warnings))
}

/// The current time, to the second (as upstream stores timestamps).
pub fn now() -> Time {
    let t = jiff::Timestamp::now();
    Time(jiff::Timestamp::from_second(t.as_second()).unwrap_or(t))
}

/// What an update does to the current object.
pub enum Change<K> {
    /// Write this object (after the shared update rules).
    Replace(K),
    /// Nothing to write; answer with the current object.
    Keep,
}

/// Which part of the object an update may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Main,
    Sub(Subresource),
}

/// Read-modify-write with optimistic concurrency, retried on conflicts: `change` gets the
/// current object and says what to write; the shared rules (system metadata, the kind's
/// update strategy, defaults, validation, generation, finalization) apply to every update.
pub async fn update_object<K: Kind>(
    st: &State,
    ns: Option<&str>,
    name: &str,
    part: Part,
    dry_run: bool,
    manager: &Manager,
    mut change: impl FnMut(&K) -> ApiResult<Change<K>>,
) -> ApiResult<K> {
    let key = key::<K>(ns, name);
    for _ in 0..64 {
        let (old, rev) = read::<K>(&st.store, ns, name).await?;
        let mut new = match change(&old)? {
            Change::Keep => return Ok(old),
            Change::Replace(new) => new,
        };
        let errors = carry_system_metadata(&old, &mut new)?;
        match part {
            Part::Main => new.prepare_for_update(&old),
            Part::Sub(sub) => new.prepare_for_subresource_update(&old, sub),
        }
        new.apply_defaults();
        new.allocate(st, Some(&old)).await?;
        let mut errors = errors;
        errors.extend(validation::object_meta::<K>(new.metadata()));
        // Immutability rules guard the main resource; a subresource only changed its part.
        errors.extend(match part {
            Part::Main => new.validate_update(&old),
            Part::Sub(_) => new.validate(),
        });
        if !errors.is_empty() {
            return Err(ApiError::invalid(K::GROUP, K::KIND, name, &errors));
        }
        // An apply has recorded its own fields already.
        if manager.operation == Operation::Update {
            managed_fields::record_update(Some(&old), &mut new, manager)?;
        }
        if K::TRACKS_GENERATION && new.spec_changed(&old) {
            new.metadata_mut().generation = Some(old.metadata().generation.unwrap_or(1) + 1);
        }
        if new == old {
            return Ok(old);
        }
        if dry_run {
            return Ok(new);
        }
        let old_held = old.held_keys();
        if new.ready_to_remove() {
            let mut txn = Txn::new(&key).at(&key, rev).delete(&key);
            for h in &old_held {
                txn = txn.delete(h);
            }
            match st.store.commit(txn).await? {
                Write::Done(_) => return Ok(new),
                Write::Conflict(_) => continue,
            }
        }
        let new_held = new.held_keys();
        let mut txn = Txn::new(&key).at(&key, rev).put(&key, encode(&new)?);
        for h in new_held.iter().filter(|h| !old_held.contains(h)) {
            txn = txn.absent(h).put(h, key.clone().into_bytes());
        }
        for h in old_held.iter().filter(|h| !new_held.contains(h)) {
            txn = txn.delete(h);
        }
        match st.store.commit(txn).await? {
            Write::Done(rev) => {
                new.metadata_mut().resource_version = Some(rev.to_string());
                return Ok(new);
            }
            Write::Conflict(None) => {
                let added: Vec<String> = new_held
                    .iter()
                    .filter(|h| !old_held.contains(h))
                    .cloned()
                    .collect();
                let taken = st.store.existing(&added).await?;
                if !taken.is_empty() {
                    let errors: Vec<FieldError> =
                        taken.iter().map(|k| new.held_key_taken(k)).collect();
                    return Err(ApiError::invalid(K::GROUP, K::KIND, name, &errors));
                }
                return Err(ApiError::not_found(K::GROUP, K::URL_PATH_SEGMENT, name));
            }
            Write::Conflict(Some(_)) => continue,
        }
    }
    Err(ApiError::modified(K::GROUP, K::URL_PATH_SEGMENT, name))
}

/// Keeps what clients cannot change on update (uid, creation time, deletion marks,
/// generation), as upstream's `BeforeUpdate`.
fn carry_system_metadata<K: Kind>(old: &K, new: &mut K) -> ApiResult<Vec<FieldError>> {
    let o = old.metadata();
    let n = new.metadata_mut();
    match n.uid.as_deref() {
        Some(uid) if !uid.is_empty() && Some(uid) != o.uid.as_deref() => {
            return Err(ApiError::conflict(
                K::GROUP,
                K::URL_PATH_SEGMENT,
                o.name.as_deref().unwrap_or(""),
                &format!(
                    "Precondition failed: UID in precondition: {}, UID in object meta: {uid}",
                    o.uid.as_deref().unwrap_or("")
                ),
            ));
        }
        _ => n.uid = o.uid.clone(),
    }
    let mut errors = Vec::new();
    if n.name != o.name {
        errors.push(FieldError::invalid(
            "metadata.name",
            n.name.clone().unwrap_or_default(),
            "field is immutable",
        ));
    }
    n.namespace = o.namespace.clone();
    n.creation_timestamp = o.creation_timestamp.clone();
    n.deletion_timestamp = o.deletion_timestamp.clone();
    n.deletion_grace_period_seconds = o.deletion_grace_period_seconds;
    n.generation = o.generation;
    n.resource_version = o.resource_version.clone();
    n.generate_name = n.generate_name.take().or_else(|| o.generate_name.clone());
    Ok(errors)
}

/// A client-sent resourceVersion must match the stored one.
fn check_resource_version<K: Kind>(given: Option<&str>, current: &K) -> ApiResult<()> {
    match given {
        Some(rv)
            if !rv.is_empty() && Some(rv) != current.metadata().resource_version.as_deref() =>
        {
            let name = current.metadata().name.clone().unwrap_or_default();
            Err(ApiError::modified(K::GROUP, K::URL_PATH_SEGMENT, &name))
        }
        _ => Ok(()),
    }
}

async fn update<K: Kind>(
    st: &State,
    req: &ApiRequest,
    sub: Option<Subresource>,
) -> ApiResult<Response> {
    let name = name_of(req)?;
    let (body, warnings) = decode_body::<K>(req)?;
    if body.metadata().name.as_deref().is_some_and(|n| n != name) {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({}) does not match the name on the URL ({name})",
            body.metadata().name.as_deref().unwrap_or("")
        )));
    }
    if K::NAMESPACED
        && let (Some(given), Some(ns)) = (
            body.metadata().namespace.as_deref(),
            req.path.namespace.as_deref(),
        )
        && !given.is_empty()
        && given != ns
    {
        return Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        ));
    }
    let ns = req.path.namespace.as_deref();
    let manager = req.manager(Operation::Update, sub)?;
    if K::CREATE_ON_UPDATE && sub.is_none() {
        let (item, _) = st.store.get(&key::<K>(ns, name)).await?;
        if item.is_none() {
            let mut body = body;
            body.metadata_mut().name = Some(name.to_string());
            let obj = create_object(st, ns, body, req.dry_run(), &manager).await?;
            return Ok(respond(req, StatusCode::CREATED, &obj, &warnings));
        }
    }
    let given_rv = body.metadata().resource_version.clone();
    let part = sub.map_or(Part::Main, Part::Sub);
    let obj = update_object::<K>(st, ns, name, part, req.dry_run(), &manager, |cur| {
        check_resource_version(given_rv.as_deref(), cur)?;
        Ok(Change::Replace(body.clone()))
    })
    .await?;
    Ok(respond(req, StatusCode::OK, &obj, &warnings))
}

async fn patch<K: Kind>(
    st: &State,
    req: &ApiRequest,
    sub: Option<Subresource>,
) -> ApiResult<Response> {
    let name = name_of(req)?;
    let kind = PatchType::from_content_type(&req.content_type())?;
    let patch_body = crate::http::parse_body(
        if kind == PatchType::Apply {
            "application/apply-patch+yaml"
        } else {
            crate::http::JSON
        },
        &req.body,
    )?;
    let validation = field_validation(&req.query)?;
    let ns = req.path.namespace.as_deref();
    let force = req.query.get("force") == Some("true");
    let manager = req.manager(
        if kind == PatchType::Apply {
            Operation::Apply
        } else {
            Operation::Update
        },
        sub,
    )?;
    if kind == PatchType::Apply {
        if req.query.get("fieldManager").is_none_or(str::is_empty) {
            return Err(ApiError::bad_request(
                "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
            ));
        }
        let (item, _) = st.store.get(&key::<K>(ns, name)).await?;
        if item.is_none() && sub.is_none() {
            let applied = managed_fields::apply::<K>(None, &patch_body, &manager, force)?;
            let (mut obj, warnings) = decode_value::<K>(applied, validation)?;
            if obj.metadata().name.as_deref().is_some_and(|n| n != name) {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({}) does not match the name on the URL ({name})",
                    obj.metadata().name.as_deref().unwrap_or("")
                )));
            }
            obj.metadata_mut().name = Some(name.to_string());
            let obj = create_object(st, ns, obj, req.dry_run(), &manager).await?;
            return Ok(respond(req, StatusCode::CREATED, &obj, &warnings));
        }
    }
    let mut warnings = Vec::new();
    let part = sub.map_or(Part::Main, Part::Sub);
    let obj = update_object::<K>(st, ns, name, part, req.dry_run(), &manager, |cur| {
        let patched = if kind == PatchType::Apply {
            managed_fields::apply(Some(cur), &patch_body, &manager, force)?
        } else {
            let current =
                serde_json::to_value(cur).map_err(|e| ApiError::internal(e.to_string()))?;
            patch::apply(kind, &current, &patch_body)?
        };
        let (new, w) = decode_value::<K>(patched, validation)?;
        check_resource_version(new.metadata().resource_version.as_deref(), cur)?;
        warnings = w;
        Ok(Change::Replace(new))
    })
    .await?;
    Ok(respond(req, StatusCode::OK, &obj, &warnings))
}

/// DeleteOptions from the body and the query (`gracePeriodSeconds`, `propagationPolicy`).
#[derive(Debug, Default, Clone)]
pub struct DeleteOptions {
    pub grace_period_seconds: Option<i64>,
    pub uid: Option<String>,
    pub resource_version: Option<String>,
    pub propagation_policy: Option<String>,
    pub dry_run: bool,
}

fn delete_options(req: &ApiRequest) -> ApiResult<DeleteOptions> {
    let mut opts = DeleteOptions {
        grace_period_seconds: req.query.int("gracePeriodSeconds")?,
        propagation_policy: req.query.get("propagationPolicy").map(String::from),
        dry_run: req.dry_run(),
        ..Default::default()
    };
    if !req.body.is_empty() {
        let v = crate::http::parse_body(&req.content_type(), &req.body)?;
        let body: k8s_openapi::apimachinery::pkg::apis::meta::v1::DeleteOptions =
            serde_json::from_value(v).map_err(|e| {
                ApiError::bad_request(format!("the DeleteOptions body is malformed: {e}"))
            })?;
        opts.grace_period_seconds = body.grace_period_seconds.or(opts.grace_period_seconds);
        opts.propagation_policy = body.propagation_policy.or(opts.propagation_policy);
        opts.dry_run |= body.dry_run.is_some_and(|d| d.iter().any(|x| x == "All"));
        if let Some(p) = body.preconditions {
            opts.uid = p.uid;
            opts.resource_version = p.resource_version;
        }
    }
    if let Some(p) = opts.propagation_policy.as_deref()
        && !matches!(p, "Orphan" | "Background" | "Foreground")
    {
        return Err(ApiError::bad_request(format!(
            "propagationPolicy must be one of Orphan, Background, Foreground; got {p:?}"
        )));
    }
    Ok(opts)
}

/// Deletes one object: now, or marked for a graceful end, as its kind and finalizers say.
pub async fn delete_object<K: Kind>(
    st: &State,
    ns: Option<&str>,
    name: &str,
    opts: &DeleteOptions,
) -> ApiResult<K> {
    let key = key::<K>(ns, name);
    for _ in 0..64 {
        let (old, rev) = read::<K>(&st.store, ns, name).await?;
        let meta = old.metadata();
        if let Some(uid) = opts.uid.as_deref()
            && meta.uid.as_deref() != Some(uid)
        {
            return Err(ApiError::conflict(
                K::GROUP,
                K::URL_PATH_SEGMENT,
                name,
                &format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    meta.uid.as_deref().unwrap_or("")
                ),
            ));
        }
        if let Some(rv) = opts.resource_version.as_deref()
            && meta.resource_version.as_deref() != Some(rv)
        {
            return Err(ApiError::conflict(
                K::GROUP,
                K::URL_PATH_SEGMENT,
                name,
                &format!(
                    "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                    meta.resource_version.as_deref().unwrap_or("")
                ),
            ));
        }
        let mut obj = old.clone();
        let now = now();
        let mut decision = obj.on_delete(opts.grace_period_seconds, &now)?;
        // Orphan and Foreground deletions are carried out by the garbage collector, which
        // finds them by these finalizers (Background, the default, needs nothing here).
        let gc_finalizer = match opts.propagation_policy.as_deref() {
            Some("Orphan") => Some("orphan"),
            Some("Foreground") => Some("foregroundDeletion"),
            _ => None,
        };
        if let Some(f) = gc_finalizer {
            let finalizers = obj.metadata_mut().finalizers.get_or_insert_with(Vec::new);
            if !finalizers.iter().any(|x| x == f) {
                finalizers.push(f.to_string());
            }
        }
        let has_finalizers = obj
            .metadata()
            .finalizers
            .as_ref()
            .is_some_and(|f| !f.is_empty());
        if decision == DeleteDecision::Now && has_finalizers {
            let m = obj.metadata_mut();
            if m.deletion_timestamp.is_none() {
                m.deletion_timestamp = Some(now);
                m.deletion_grace_period_seconds = Some(0);
            }
            decision = DeleteDecision::Graceful;
        }
        if opts.dry_run {
            return Ok(obj);
        }
        match decision {
            DeleteDecision::Now => match st
                .store
                .commit(
                    old.held_keys()
                        .iter()
                        .fold(Txn::new(&key).at(&key, rev).delete(&key), |t, h| {
                            t.delete(h)
                        }),
                )
                .await?
            {
                Write::Done(_) => return Ok(obj),
                Write::Conflict(None) => {
                    return Err(ApiError::not_found(K::GROUP, K::URL_PATH_SEGMENT, name));
                }
                Write::Conflict(Some(_)) => continue,
            },
            DeleteDecision::Graceful if obj == old => return Ok(obj),
            DeleteDecision::Graceful => match st.store.update(&key, encode(&obj)?, rev).await? {
                Write::Done(rev) => {
                    obj.metadata_mut().resource_version = Some(rev.to_string());
                    return Ok(obj);
                }
                Write::Conflict(None) => {
                    return Err(ApiError::not_found(K::GROUP, K::URL_PATH_SEGMENT, name));
                }
                Write::Conflict(Some(_)) => continue,
            },
        }
    }
    Err(ApiError::modified(K::GROUP, K::URL_PATH_SEGMENT, name))
}

async fn delete<K: Kind>(st: &State, req: &ApiRequest) -> ApiResult<Response> {
    let opts = delete_options(req)?;
    let obj = delete_object::<K>(st, req.path.namespace.as_deref(), name_of(req)?, &opts).await?;
    Ok(respond(req, StatusCode::OK, &obj, &[]))
}

async fn delete_collection<K: Kind>(st: &State, req: &ApiRequest) -> ApiResult<Response> {
    let opts = delete_options(req)?;
    let filter = Filter::from_query::<K>(&req.query)?;
    let ns = req.path.namespace.as_deref();
    let (objs, rev, _) = list_objects::<K>(st, ns, &filter, &Query::default()).await?;
    let mut deleted = Vec::new();
    for o in objs {
        let name = o.metadata().name.clone().unwrap_or_default();
        match delete_object::<K>(st, o.metadata().namespace.as_deref(), &name, &opts).await {
            Ok(d) => deleted.push(d),
            Err(e) if e.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "kind": K::LIST_KIND,
            "apiVersion": K::API_VERSION,
            "metadata": {"resourceVersion": rev.to_string()},
            "items": deleted,
        }),
    ))
}

/// The autoscaling/v1 Scale of an object.
fn scale_of<K: Kind>(obj: &K) -> ApiResult<Value> {
    let (spec, status, selector) = obj
        .scale()
        .ok_or_else(|| ApiError::internal(format!("{} has no scale subresource", K::KIND)))?;
    let m = obj.metadata();
    let mut status_v = json!({"replicas": status});
    if !selector.is_empty() {
        status_v["selector"] = json!(selector);
    }
    Ok(json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": m.name, "namespace": m.namespace, "uid": m.uid,
            "resourceVersion": m.resource_version, "creationTimestamp": m.creation_timestamp,
        },
        "spec": {"replicas": spec},
        "status": status_v,
    }))
}

async fn get_scale<K: Kind>(st: &State, req: &ApiRequest) -> ApiResult<Response> {
    let (obj, _) = read::<K>(&st.store, req.path.namespace.as_deref(), name_of(req)?).await?;
    Ok(json_response(StatusCode::OK, &scale_of(&obj)?))
}

/// PUT or PATCH of `/scale`: only spec.replicas changes.
async fn update_scale<K: Kind>(st: &State, req: &ApiRequest) -> ApiResult<Response> {
    let name = name_of(req)?;
    let patch_kind = match req.verb {
        Verb::Patch => Some(PatchType::from_content_type(&req.content_type())?),
        _ => None,
    };
    let content_type = if patch_kind.is_some() {
        crate::http::JSON.to_string()
    } else {
        req.content_type()
    };
    let body = crate::http::parse_body(&content_type, &req.body)?;
    let manager = req.manager(Operation::Update, Some(Subresource::Scale))?;
    let obj = update_object::<K>(
        st,
        req.path.namespace.as_deref(),
        name,
        Part::Sub(Subresource::Scale),
        req.dry_run(),
        &manager,
        |cur| {
            let current = scale_of(cur)?;
            let wanted = match patch_kind {
                Some(kind) => patch::apply(kind, &current, &body)?,
                None => body.clone(),
            };
            if let Some(rv) = wanted["metadata"]["resourceVersion"].as_str() {
                check_resource_version(Some(rv), cur)?;
            }
            let replicas = match &wanted["spec"]["replicas"] {
                Value::Null => 0,
                v => v.as_i64().ok_or_else(|| {
                    ApiError::bad_request("spec.replicas of a Scale must be an integer")
                })?,
            };
            if replicas < 0 || replicas > i64::from(i32::MAX) {
                return Err(ApiError::invalid(
                    "autoscaling",
                    "Scale",
                    name,
                    &[FieldError::invalid(
                        "spec.replicas",
                        replicas,
                        "must be greater than or equal to 0",
                    )],
                ));
            }
            let mut new = cur.clone();
            new.set_replicas(replicas as i32);
            Ok(Change::Replace(new))
        },
    )
    .await?;
    Ok(json_response(StatusCode::OK, &scale_of(&obj)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_are_found_with_their_paths() {
        use k8s_openapi::api::core::v1::Pod;
        let input = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a", "bogus": 1, "creationTimestamp": null},
            "spec": {"containers": [{"name": "c", "image": "i", "imagePullPolice": "x"}], "foo": {"bar": 1}}});
        let (_, warnings) = decode_value::<Pod>(input.clone(), FieldValidation::Warn).unwrap();
        assert_eq!(
            warnings,
            vec![
                "unknown field \"metadata.bogus\"".to_string(),
                "unknown field \"spec.containers[0].imagePullPolice\"".to_string(),
                "unknown field \"spec.foo\"".to_string(),
            ]
        );
        let err = decode_value::<Pod>(input.clone(), FieldValidation::Strict).unwrap_err();
        assert_eq!(err.code, 400);
        assert!(
            err.message
                .starts_with("strict decoding error: unknown field \"metadata.bogus\""),
            "{}",
            err.message
        );
        assert!(
            decode_value::<Pod>(input, FieldValidation::Ignore)
                .unwrap()
                .1
                .is_empty()
        );
    }

    #[test]
    fn wrong_kind_or_version_or_types_are_bad_requests() {
        use k8s_openapi::api::core::v1::Pod;
        for body in [
            json!({"apiVersion": "apps/v1", "kind": "Pod"}),
            json!({"apiVersion": "v1", "kind": "Node"}),
            json!({"apiVersion": "v1", "kind": "Pod", "spec": {"containers": "nope"}}),
            json!([1, 2]),
        ] {
            let err = decode_value::<Pod>(body.clone(), FieldValidation::Strict).unwrap_err();
            assert_eq!(err.code, 400, "{body}");
        }
    }

    #[test]
    fn continue_tokens_round_trip_and_reject_garbage() {
        let t = encode_continue(42, b"/registry/pods/default/b\0");
        assert_eq!(
            decode_continue(&t, "/registry/pods/").unwrap(),
            (42, b"/registry/pods/default/b\0".to_vec())
        );
        assert!(decode_continue(&t, "/registry/nodes/").is_err());
        assert!(decode_continue("!!!", "/registry/pods/").is_err());
    }
}
