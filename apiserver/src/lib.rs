//! miniorch-apiserver: a stateless REST server for the Kubernetes API over an etcd v3 store.
//! It validates, defaults, stores and serves objects with upstream's paths, JSON shapes and
//! semantics, so kubectl and the official clients work against it. Any number of apiservers
//! may run over one store: all state is in the store.

pub mod cache;
pub mod discovery;
pub mod errors;
pub mod fuzz;
pub mod handlers;
pub mod http;
pub mod kinds;
pub mod managed_fields;
pub mod metrics_api;
pub mod node_proxy;
pub mod openapi;
pub mod patch;
pub mod protobuf;
pub mod registry;
pub mod request;
pub mod storage;
pub mod table;
#[cfg(feature = "testing")]
pub mod testing;
pub mod validation;
pub mod watch;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ::http::{HeaderMap, StatusCode};
use anyhow::Context;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State as AxumState};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use crate::errors::ApiError;
use crate::handlers::ApiRequest;
use crate::registry::Registry;
use crate::storage::Etcd;

/// The Kubernetes version this server reports: the one its types (k8s-openapi v1_33) match.
pub const GIT_VERSION: &str = "v1.33.0";

/// Flags of `miniorch-apiserver` (and `miniorch apiserver`).
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "miniorch-apiserver",
    about = "The miniorch API server: the Kubernetes API over an etcd v3 store"
)]
pub struct Config {
    /// Store endpoints (miniorch-store or etcd), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:2379")]
    pub etcd_servers: Vec<String>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub bind_address: std::net::IpAddr,
    /// Port to serve the API on.
    #[arg(long, default_value_t = 6443)]
    pub port: u16,
    /// The address pods reach this apiserver at (the `kubernetes` service's endpoint); default:
    /// the bind address, or this host's primary address when binding all addresses.
    #[arg(long)]
    pub advertise_address: Option<std::net::IpAddr>,
    /// The range cluster IPs of services come from (IPv4 CIDR).
    #[arg(long, default_value = "10.96.0.0/12", value_parser = kinds::service::IpRange::parse)]
    pub service_cluster_ip_range: kinds::service::IpRange,
    /// The range node ports of NodePort services come from.
    #[arg(long, default_value = "30000-32767", value_parser = kinds::service::PortRange::parse)]
    pub service_node_port_range: kinds::service::PortRange,
    /// Past events each resource's watch cache keeps for watches that resume from a recent
    /// resourceVersion (older ones are served from the store).
    #[arg(long, default_value_t = cache::DEFAULT_RING)]
    pub default_watch_cache_size: usize,
}

/// Where services' cluster IPs and node ports come from.
#[derive(Debug, Clone)]
pub struct ServiceRanges {
    pub ips: kinds::service::IpRange,
    /// The range as the user wrote it, for messages.
    pub ips_text: String,
    pub node_ports: kinds::service::PortRange,
}

/// What every request handler shares.
pub struct State {
    pub store: Etcd,
    pub registry: Registry,
    /// `host:port` clients reach this server at (legacy discovery reports it).
    pub address: String,
    pub services: ServiceRanges,
    /// Cancelled at shutdown: watch caches and open watches end.
    pub shutdown: CancellationToken,
    /// Past events each watch cache keeps.
    pub watch_cache_size: usize,
}

type Shared = Arc<State>;

/// Serves the API until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let addr = SocketAddr::new(config.bind_address, config.port);
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
        format!(
            "apiserver: cannot listen on {addr} (is another apiserver running? pick another --port)"
        )
    })?;
    let store = Etcd::connect(&config.etcd_servers)?;
    let ips = config.service_cluster_ip_range;
    let services = ServiceRanges {
        ips,
        ips_text: format!("{}/{}", std::net::Ipv4Addr::from(ips.base), ips.prefix),
        node_ports: config.service_node_port_range,
    };
    let state = Arc::new(State {
        store,
        registry: kinds::registry(),
        address: addr.to_string(),
        services,
        shutdown: shutdown.clone(),
        watch_cache_size: config.default_watch_cache_size.max(1),
    });
    // Until the store answers, every request gets a prompt 503 (as kube-apiserver's readyz
    // reports a failing etcd check), not a connection left unanswered.
    let starting = CancellationToken::new();
    let not_ready = answer_not_ready(&listener, starting.clone())?;
    let started = async {
        wait_for_store(&state, &config.etcd_servers, &shutdown).await?;
        if shutdown.is_cancelled() {
            return Ok(());
        }
        ensure_system_namespaces(&state).await?;
        let advertise = config
            .advertise_address
            .unwrap_or_else(|| advertise_default(config.bind_address));
        ensure_kubernetes_service(&state, advertise, config.port).await
    }
    .await;
    starting.cancel();
    // It stops accepting at once; a client that never finishes its request is not waited for.
    let _ = tokio::time::timeout(Duration::from_secs(5), not_ready).await;
    started?;
    if shutdown.is_cancelled() {
        return Ok(());
    }
    for endpoint in state.registry.endpoints() {
        endpoint.start_cache(&state);
    }
    tracing::info!(%addr, store = ?config.etcd_servers, "apiserver serving");
    serve(listener, state, shutdown).await
}

/// Answers 503 on a second handle of `listener` until `done`, closing each connection.
fn answer_not_ready(
    listener: &tokio::net::TcpListener,
    done: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    use std::os::fd::AsFd;
    let fd = listener
        .as_fd()
        .try_clone_to_owned()
        .context("apiserver: cannot share the listening socket")?;
    let early = tokio::net::TcpListener::from_std(std::net::TcpListener::from(fd))?;
    let app = Router::new().fallback(|| async {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            [(::http::header::CONNECTION, "close")],
            "[-]etcd failed: the apiserver is waiting for its store\nreadyz check failed\n",
        )
    });
    Ok(tokio::spawn(async move {
        let _ = axum::serve(early, app)
            .with_graceful_shutdown(done.cancelled_owned())
            .await;
    }))
}

/// Serves `state` on `listener` until `shutdown`; open watches are cut so shutdown is prompt.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Shared,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let app = router(state);
    let server =
        axum::serve(listener, app).with_graceful_shutdown(shutdown.clone().cancelled_owned());
    tokio::select! {
        r = server => r.context("apiserver: serving failed"),
        // Long watches keep connections open; do not wait for them longer than this.
        _ = async { shutdown.cancelled().await; tokio::time::sleep(Duration::from_secs(3)).await } => Ok(()),
    }
}

pub fn router(state: Shared) -> Router {
    Router::new()
        .route("/version", get(version))
        .route("/healthz", get(healthz))
        .route("/livez", get(healthz))
        .route("/readyz", get(readyz))
        .route("/api", get(api_root))
        .route("/apis", get(apis_root))
        .route("/api/{version}", get(core_version))
        .route("/apis/{group}", get(group))
        .route("/apis/{group}/{version}", get(group_version))
        .route("/openapi/v3", get(openapi_index))
        .route("/openapi/v3/{*path}", get(openapi_document))
        .fallback(resources)
        .with_state(state)
}

async fn wait_for_store(
    state: &State,
    endpoints: &[String],
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let mut logged = false;
    loop {
        match state.store.revision().await {
            Ok(_) => return Ok(()),
            Err(e) => {
                if !logged {
                    tracing::warn!(error = %e, ?endpoints, "waiting for the store");
                    logged = true;
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
}

/// The manager the server's own writes are recorded under.
fn system_manager() -> managed_fields::Manager {
    managed_fields::Manager::system("miniorch-apiserver")
}

async fn ensure_system_namespaces(state: &State) -> anyhow::Result<()> {
    use k8s_openapi::api::core::v1::Namespace;
    for name in kinds::namespace::SYSTEM {
        let mut ns = Namespace::default();
        ns.metadata.name = Some(name.to_string());
        match handlers::create_object(state, None, ns, false, &system_manager()).await {
            Ok(_) => tracing::info!(namespace = name, "created system namespace"),
            Err(e) if e.code == 409 => {}
            Err(e) => anyhow::bail!("cannot create namespace {name}: {e}"),
        }
    }
    Ok(())
}

/// The address to advertise when none is given.
fn advertise_default(bind: std::net::IpAddr) -> std::net::IpAddr {
    if !bind.is_unspecified() {
        return bind;
    }
    // The source address of the default route, found without sending anything.
    std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| s.connect("192.0.2.1:9").map(|_| s))
        .and_then(|s| s.local_addr())
        .map(|a| a.ip())
        .unwrap_or(bind)
}

/// The `default/kubernetes` service (the first IP of the range) and its endpoints: how pods
/// reach the API, as upstream's bootstrap controller keeps them.
async fn ensure_kubernetes_service(
    state: &State,
    advertise: std::net::IpAddr,
    port: u16,
) -> anyhow::Result<()> {
    use k8s_openapi::api::core::v1::{
        EndpointAddress, EndpointPort, EndpointSubset, Endpoints, Service,
    };
    use k8s_openapi::api::discovery::v1::{
        Endpoint, EndpointConditions, EndpointPort as SlicePort, EndpointSlice,
    };
    let svc: Service = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "kubernetes", "namespace": "default",
                     "labels": {"component": "apiserver", "provider": "kubernetes"}},
        "spec": {"clusterIP": state.services.ips.first().to_string(), "type": "ClusterIP",
                 "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": port}]}
    }))?;
    match handlers::create_object(state, Some("default"), svc, false, &system_manager()).await {
        Ok(_) | Err(ApiError { code: 409, .. }) => {}
        Err(e) => anyhow::bail!("cannot create the kubernetes service: {e}"),
    }
    let port = i32::from(port);
    let mut endpoints = Endpoints::default();
    endpoints.metadata.name = Some("kubernetes".into());
    endpoints.subsets = Some(vec![EndpointSubset {
        addresses: Some(vec![EndpointAddress {
            ip: advertise.to_string(),
            ..Default::default()
        }]),
        ports: Some(vec![EndpointPort {
            name: Some("https".into()),
            port,
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        ..Default::default()
    }]);
    let mut slice = EndpointSlice {
        address_type: if advertise.is_ipv4() {
            "IPv4".into()
        } else {
            "IPv6".into()
        },
        endpoints: vec![Endpoint {
            addresses: vec![advertise.to_string()],
            conditions: Some(EndpointConditions {
                ready: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        }],
        ports: Some(vec![SlicePort {
            name: Some("https".into()),
            port: Some(port),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        ..Default::default()
    };
    slice.metadata.name = Some("kubernetes".into());
    slice.metadata.labels = Some(
        [(
            "kubernetes.io/service-name".to_string(),
            "kubernetes".to_string(),
        )]
        .into(),
    );
    put(state, endpoints).await?;
    put(state, slice).await
}

/// Creates `obj` in `default`, or replaces what is there.
async fn put<K: registry::Kind>(state: &State, obj: K) -> anyhow::Result<()> {
    let name = obj.metadata().name.clone().unwrap_or_default();
    match handlers::create_object(
        state,
        Some("default"),
        obj.clone(),
        false,
        &system_manager(),
    )
    .await
    {
        Ok(_) => Ok(()),
        Err(e) if e.code == 409 => handlers::update_object::<K>(
            state,
            Some("default"),
            &name,
            handlers::Part::Main,
            false,
            &system_manager(),
            |_| Ok(handlers::Change::Replace(obj.clone())),
        )
        .await
        .map(|_| ())
        .map_err(|e| anyhow::anyhow!("cannot update {} default/{name}: {e}", K::KIND)),
        Err(e) => anyhow::bail!("cannot create {} default/{name}: {e}", K::KIND),
    }
}

async fn version() -> Response {
    crate::http::json_response(
        StatusCode::OK,
        &serde_json::json!({
            "major": "1",
            "minor": "33",
            "gitVersion": GIT_VERSION,
            "gitCommit": "miniorch",
            "gitTreeState": "clean",
            "buildDate": "2026-01-01T00:00:00Z",
            "goVersion": "go1.24.0",
            "compiler": "gc",
            "platform": format!("linux/{}", if cfg!(target_arch = "aarch64") { "arm64" } else { "amd64" }),
        }),
    )
}

async fn healthz() -> &'static str {
    "ok"
}

/// Ready when the store answers.
async fn readyz(AxumState(st): AxumState<Shared>) -> Response {
    match st.store.revision().await {
        Ok(_) => "ok".into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("[-]etcd failed: {e}\nreadyz check failed\n"),
        )
            .into_response(),
    }
}

async fn api_root(AxumState(st): AxumState<Shared>, headers: HeaderMap) -> Response {
    discovery::api(&st.registry, &headers, &st.address)
}

async fn apis_root(AxumState(st): AxumState<Shared>, headers: HeaderMap) -> Response {
    discovery::apis(&st.registry, &headers)
}

async fn core_version(AxumState(st): AxumState<Shared>, Path(version): Path<String>) -> Response {
    discovery::resource_list(&st.registry, "", &version)
        .unwrap_or_else(|| ApiError::no_route().into_response())
}

async fn group(AxumState(st): AxumState<Shared>, Path(group): Path<String>) -> Response {
    discovery::group(&st.registry, &group).unwrap_or_else(|| ApiError::no_route().into_response())
}

async fn group_version(
    AxumState(st): AxumState<Shared>,
    Path((group, version)): Path<(String, String)>,
) -> Response {
    discovery::resource_list(&st.registry, &group, &version)
        .unwrap_or_else(|| ApiError::no_route().into_response())
}

async fn openapi_index(AxumState(st): AxumState<Shared>) -> Response {
    crate::http::json_response(StatusCode::OK, &openapi::index(&st.registry))
}

async fn openapi_document(AxumState(st): AxumState<Shared>, Path(path): Path<String>) -> Response {
    match openapi::document(&st.registry, &path) {
        Some(doc) => crate::http::json_response(StatusCode::OK, &doc),
        None => ApiError::no_route().into_response(),
    }
}

/// Every resource request: parse the path, find the resource, read the body, dispatch.
async fn resources(AxumState(st): AxumState<Shared>, request: axum::extract::Request) -> Response {
    let started = std::time::Instant::now();
    let (parts, body) = request.into_parts();
    let (method, path) = (parts.method.clone(), parts.uri.path().to_string());
    let resp = match handle(&st, parts, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    tracing::debug!(%method, %path, status = resp.status().as_u16(), elapsed_ms = started.elapsed().as_millis() as u64, "request");
    resp
}

async fn handle(
    st: &State,
    parts: ::http::request::Parts,
    body: Body,
) -> Result<Response, ApiError> {
    let ::http::request::Parts {
        method,
        uri,
        headers,
        extensions,
        ..
    } = parts;
    let path = request::parse(uri.path()).ok_or_else(ApiError::no_route)?;
    let query = crate::http::Query::parse(uri.query());
    let verb = request::verb(&method, &path, query.flag("watch")).ok_or_else(|| {
        ApiError::method_not_allowed(format!("method {method} is not allowed here"))
    })?;
    let endpoint = st
        .registry
        .get(&path.group, &path.version, &path.resource)
        .ok_or_else(ApiError::no_route)?
        .clone();
    let body = axum::body::to_bytes(body, crate::http::MAX_BODY)
        .await
        .map_err(|_| ApiError::too_large("the request body is larger than 3 MiB"))?;
    endpoint
        .handle(
            st,
            ApiRequest {
                method,
                path,
                verb,
                query,
                headers,
                body,
                extensions,
            },
        )
        .await
}
