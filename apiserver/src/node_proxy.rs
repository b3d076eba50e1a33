//! Requests the apiserver passes on to the agent that runs a pod, as upstream's apiserver does
//! with the kubelet: `pods/log` streams the agent's plain-text answer back (chunked while
//! following), and `pods/exec` accepts the client's WebSocket (`v5.channel.k8s.io` or
//! `v4.channel.k8s.io`), opens one to the agent's `/exec/...` and relays the already
//! channel-framed messages both ways. The agent is found through the pod's node: its
//! InternalIP and the port in `status.daemonEndpoints.kubeletEndpoint`.
//!
//! Checks upstream makes in the apiserver happen here (the container, the log options, a node
//! assigned); the agent's refusals come back as `Status` errors, as upstream's
//! `GenericHttpResponseChecker` makes them.

use std::net::{IpAddr, SocketAddr};
use std::sync::OnceLock;
use std::time::Duration;

use axum::body::Body;
use axum::extract::FromRequestParts;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http::{HeaderValue, header};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use k8s_openapi::api::core::v1::{Node, Pod};
use serde_json::json;
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::State;
use crate::errors::{ApiError, ApiResult, FieldError};
use crate::handlers::{ApiRequest, read};
use crate::http::Query;

/// How long connecting to an agent may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an agent may take to start answering (a followed log then streams on).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// Most of an agent's error answer that is read.
const MAX_ERROR_BODY: usize = 64 * 1024;
/// The agent port a node that reports none has (upstream's default).
pub const DEFAULT_AGENT_PORT: u16 = 10250;
/// The exec subprotocols relayed, most preferred first.
pub const EXEC_PROTOCOLS: [&str; 2] = ["v5.channel.k8s.io", "v4.channel.k8s.io"];
/// Largest WebSocket message relayed.
const MAX_MESSAGE: usize = 1024 * 1024;

/// The HTTP client every call to an agent goes through (connections are pooled).
fn client() -> &'static Client<HttpConnector, Empty<Bytes>> {
    static CLIENT: OnceLock<Client<HttpConnector, Empty<Bytes>>> = OnceLock::new();
    CLIENT.get_or_init(|| {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        connector.set_nodelay(true);
        Client::builder(TokioExecutor::new()).build(connector)
    })
}

/// Where node `node`'s agent listens: its InternalIP (ExternalIP failing that) and the port it
/// reports; an error says what is missing.
pub fn agent_address(node: &Node) -> Result<SocketAddr, String> {
    let name = node.metadata.name.as_deref().unwrap_or_default();
    let status = node.status.as_ref();
    let addresses = status.and_then(|s| s.addresses.as_ref());
    let ip = ["InternalIP", "ExternalIP"].iter().find_map(|t| {
        addresses?
            .iter()
            .filter(|a| a.type_ == *t)
            .find_map(|a| a.address.parse::<IpAddr>().ok())
    });
    let Some(ip) = ip else {
        return Err(format!("node {name:?} reports no InternalIP address"));
    };
    let port = status
        .and_then(|s| s.daemon_endpoints.as_ref())
        .and_then(|d| d.kubelet_endpoint.as_ref())
        .map(|e| e.port);
    match port {
        None => Ok(SocketAddr::new(ip, DEFAULT_AGENT_PORT)),
        Some(p) => match u16::try_from(p) {
            Ok(p) if p > 0 => Ok(SocketAddr::new(ip, p)),
            _ => Err(format!(
                "the agent of node {name:?} serves no API (its --port is 0)"
            )),
        },
    }
}

/// The container a request is about, by upstream's rules: the one named (it must exist), or
/// the only one.
pub fn pick_container(pod: &Pod, requested: Option<&str>) -> ApiResult<String> {
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let spec = pod.spec.clone().unwrap_or_default();
    let names = |cs: &[k8s_openapi::api::core::v1::Container]| -> Vec<String> {
        cs.iter().map(|c| c.name.clone()).collect()
    };
    let app = names(&spec.containers);
    let init = names(spec.init_containers.as_deref().unwrap_or_default());
    let ephemeral: Vec<String> = spec
        .ephemeral_containers
        .iter()
        .flatten()
        .map(|c| c.name.clone())
        .collect();
    match requested.filter(|c| !c.is_empty()) {
        Some(c) if app.iter().chain(&init).chain(&ephemeral).any(|n| n == c) => Ok(c.to_string()),
        Some(c) => Err(ApiError::bad_request(format!(
            "container {c} is not valid for pod {name}"
        ))),
        None => match app.as_slice() {
            [only] => Ok(only.clone()),
            [] => Err(ApiError::bad_request(format!(
                "a container name must be specified for pod {name}"
            ))),
            many => {
                let mut msg = format!(
                    "a container name must be specified for pod {name}, choose one of: [{}]",
                    many.join(" ")
                );
                if !init.is_empty() {
                    msg.push_str(&format!(
                        " or one of the init containers: [{}]",
                        init.join(" ")
                    ));
                }
                if !ephemeral.is_empty() {
                    msg.push_str(&format!(
                        " or one of the ephemeral containers: [{}]",
                        ephemeral.join(" ")
                    ));
                }
                Err(ApiError::bad_request(msg))
            }
        },
    }
}

fn flag(q: &Query, k: &str) -> ApiResult<bool> {
    match q.get(k) {
        None | Some("") => Ok(false),
        Some("true" | "1" | "t" | "T" | "TRUE" | "True") => Ok(true),
        Some("false" | "0" | "f" | "F" | "FALSE" | "False") => Ok(false),
        Some(v) => Err(ApiError::bad_request(format!(
            "invalid value for {k}: {v:?} is not a boolean"
        ))),
    }
}

/// The agent's query for the log options of `q`, checked as upstream's
/// `ValidatePodLogOptions` (a 422 naming the field).
pub fn log_query(q: &Query, pod: &str) -> ApiResult<String> {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for k in ["follow", "previous", "timestamps"] {
        if flag(q, k)? {
            out.push(format!("{k}=true"));
        }
    }
    if let Some(n) = q.int("tailLines")? {
        if n < 0 {
            errors.push(FieldError::invalid(
                "tailLines",
                n,
                "must be greater than or equal to 0",
            ));
        }
        out.push(format!("tailLines={n}"));
    }
    if let Some(n) = q.int("limitBytes")? {
        if n < 1 {
            errors.push(FieldError::invalid(
                "limitBytes",
                n,
                "must be greater than 0",
            ));
        }
        out.push(format!("limitBytes={n}"));
    }
    let since_seconds = q.int("sinceSeconds")?;
    if let Some(n) = since_seconds {
        if n < 1 {
            errors.push(FieldError::invalid(
                "sinceSeconds",
                n,
                "must be greater than 0",
            ));
        }
        out.push(format!("sinceSeconds={n}"));
    }
    if let Some(t) = q.get("sinceTime").filter(|t| !t.is_empty()) {
        let t: jiff::Timestamp = t.parse().map_err(|_| {
            ApiError::bad_request(format!(
                "invalid value for sinceTime: {t:?} is not an RFC 3339 time"
            ))
        })?;
        if since_seconds.is_some() {
            errors.push(FieldError::forbidden(
                "sinceSeconds",
                "at most one of `sinceTime` or `sinceSeconds` may be specified",
            ));
        }
        out.push(format!("sinceTime={t}"));
    }
    if !errors.is_empty() {
        return Err(ApiError::invalid("", "PodLogOptions", pod, &errors));
    }
    Ok(out.join("&"))
}

/// An agent's refusal as a Status (upstream's `GenericHttpResponseChecker`, keeping the
/// agent's words as the message).
pub fn agent_error(code: u16, body: &[u8], pod: &str) -> ApiError {
    let text = String::from_utf8_lossy(body).trim().to_string();
    let text = if text.is_empty() {
        format!("the node's agent answered {code}")
    } else {
        text
    };
    match code {
        400 => ApiError::bad_request(text),
        500 => ApiError::internal(format!("Internal error occurred: {text}")),
        _ => {
            let reason = match code {
                401 => "Unauthorized",
                403 => "Forbidden",
                404 => "NotFound",
                409 => "Conflict",
                429 => "TooManyRequests",
                503 => "ServiceUnavailable",
                504 => "Timeout",
                _ => "InternalError",
            };
            ApiError {
                code: if (400..600).contains(&code) {
                    code
                } else {
                    500
                },
                reason,
                message: text,
                details: Some(json!({"name": pod, "kind": "pods"})),
            }
        }
    }
}

/// Why an agent could not be asked.
fn unreachable(node: &str, addr: SocketAddr, e: impl std::fmt::Display) -> ApiError {
    ApiError::unavailable(format!(
        "cannot reach the agent of node {node} at {addr}: {e}"
    ))
}

/// `GET http://<agent><path>`: the answer once its head has arrived (its body may stream on).
pub async fn agent_get(
    node: &str,
    addr: SocketAddr,
    path_and_query: &str,
    timeout: Duration,
) -> ApiResult<http::Response<hyper::body::Incoming>> {
    let uri: http::Uri = format!("http://{addr}{path_and_query}")
        .parse()
        .map_err(|e| ApiError::internal(format!("bad agent URL: {e}")))?;
    let request = http::Request::get(uri)
        .body(Empty::new())
        .map_err(|e| ApiError::internal(format!("bad agent request: {e}")))?;
    match tokio::time::timeout(timeout, client().request(request)).await {
        Ok(Ok(resp)) => Ok(resp),
        Ok(Err(e)) => Err(unreachable(node, addr, e)),
        Err(_) => Err(ApiError::timeout(format!(
            "the agent of node {node} at {addr} did not answer within {}s",
            timeout.as_secs()
        ))),
    }
}

/// Reads at most `max` bytes of a body.
pub async fn read_body(body: hyper::body::Incoming, max: usize) -> Result<Bytes, String> {
    Limited::new(body, max)
        .collect()
        .await
        .map(|b| b.to_bytes())
        .map_err(|e| e.to_string())
}

/// The pod named by the request, and the agent address of its node (`None`: not scheduled).
async fn pod_and_agent(
    st: &State,
    req: &ApiRequest,
) -> ApiResult<(Pod, Option<(String, SocketAddr)>)> {
    let ns = req.path.namespace.as_deref();
    let name = req.path.name.as_deref().ok_or_else(ApiError::no_route)?;
    let (pod, _) = read::<Pod>(&st.store, ns, name).await?;
    let node = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .filter(|n| !n.is_empty());
    let Some(node) = node else {
        return Ok((pod, None));
    };
    let (node_obj, _) = read::<Node>(&st.store, None, &node).await?;
    let addr = agent_address(&node_obj).map_err(ApiError::unavailable)?;
    Ok((pod, Some((node, addr))))
}

fn text_response(body: Body) -> Response {
    let mut resp = Response::new(body);
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    resp
}

/// `GET pods/{name}/log`.
pub async fn log(st: &State, req: ApiRequest) -> ApiResult<Response> {
    let (pod, agent) = pod_and_agent(st, &req).await?;
    let name = pod.metadata.name.clone().unwrap_or_default();
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let container = pick_container(&pod, req.query.get("container"))?;
    let query = log_query(&req.query, &name)?;
    // A pod not yet scheduled has no log yet: upstream answers an empty one.
    let Some((node, addr)) = agent else {
        return Ok(text_response(Body::empty()));
    };
    let path = format!("/containerLogs/{ns}/{name}/{container}?{query}");
    let resp = agent_get(&node, addr, &path, ANSWER_TIMEOUT).await?;
    let code = resp.status();
    if !code.is_success() {
        let body = read_body(resp.into_body(), MAX_ERROR_BODY)
            .await
            .unwrap_or_default();
        return Err(agent_error(code.as_u16(), &body, &name));
    }
    // The agent's body streams through as it comes (chunked when following).
    Ok(text_response(Body::new(resp.into_body())))
}

/// Whether a request asks for a WebSocket.
fn wants_websocket(headers: &http::HeaderMap) -> bool {
    headers
        .get_all(header::UPGRADE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split(',')
                .any(|p| p.trim().eq_ignore_ascii_case("websocket"))
        })
}

/// The exec subprotocols the client offers that are relayed, in the client's order.
pub fn offered_protocols(headers: &http::HeaderMap) -> Vec<&'static str> {
    let offered: Vec<String> = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_string())
        .collect();
    offered
        .iter()
        .filter_map(|p| EXEC_PROTOCOLS.iter().copied().find(|e| e == p))
        .collect()
}

/// `pods/{name}/exec`: upgrade, connect to the agent, relay.
pub async fn exec(st: &State, mut req: ApiRequest) -> ApiResult<Response> {
    let (pod, agent) = pod_and_agent(st, &req).await?;
    let name = pod.metadata.name.clone().unwrap_or_default();
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let container = pick_container(&pod, req.query.get("container"))?;
    let Some((node, addr)) = agent else {
        return Err(ApiError::bad_request(format!(
            "pod {name} does not have a host assigned"
        )));
    };
    if !wants_websocket(&req.headers) {
        return Err(ApiError::bad_request(format!(
            "pods/exec needs a WebSocket connection (Sec-WebSocket-Protocol: {}); miniorch does not speak SPDY/3.1: use kubectl 1.30 or newer, without KUBECTL_REMOTE_COMMAND_WEBSOCKETS=false",
            EXEC_PROTOCOLS.join(" or ")
        )));
    }
    let offered = offered_protocols(&req.headers);
    if offered.is_empty() {
        return Err(ApiError::bad_request(format!(
            "unable to negotiate a WebSocket subprotocol: this server relays {}",
            EXEC_PROTOCOLS.join(", ")
        )));
    }
    // `command` repeats in the query, so the raw query goes to the agent as it came.
    let query = req
        .extensions
        .get::<axum::extract::OriginalUri>()
        .and_then(|u| u.0.query().map(str::to_string))
        .ok_or_else(|| ApiError::internal("the request's query is not available"))?;
    let upgrade = websocket_upgrade(&mut req).await?;

    let url = format!("ws://{addr}/exec/{ns}/{name}/{container}?{query}");
    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(|e| ApiError::internal(format!("bad agent URL {url}: {e}")))?;
    let protocols = HeaderValue::from_str(&offered.join(", "))
        .map_err(|e| ApiError::internal(e.to_string()))?;
    request
        .headers_mut()
        .insert(header::SEC_WEBSOCKET_PROTOCOL, protocols);
    let config = tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE));
    let connect = tokio_tungstenite::connect_async_with_config(request, Some(config), true);
    let (agent_ws, answer) = match tokio::time::timeout(ANSWER_TIMEOUT, connect).await {
        Ok(Ok(ok)) => ok,
        Ok(Err(tungstenite::Error::Http(resp))) => {
            let body = resp.body().as_deref().unwrap_or_default();
            let body = &body[..body.len().min(MAX_ERROR_BODY)];
            return Err(agent_error(resp.status().as_u16(), body, &name));
        }
        Ok(Err(e)) => return Err(unreachable(&node, addr, e)),
        Err(_) => {
            return Err(ApiError::timeout(format!(
                "the agent of node {node} at {addr} did not answer within {}s",
                ANSWER_TIMEOUT.as_secs()
            )));
        }
    };
    let chosen = answer
        .headers()
        .get(header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok())
        .and_then(|p| EXEC_PROTOCOLS.iter().copied().find(|e| *e == p))
        .ok_or_else(|| {
            ApiError::internal(format!(
                "the agent of node {node} chose no exec subprotocol"
            ))
        })?;
    Ok(upgrade
        .protocols([chosen])
        .max_message_size(MAX_MESSAGE)
        .max_frame_size(MAX_MESSAGE)
        .on_upgrade(move |client| relay(client, agent_ws)))
}

/// axum's upgrade from the request's parts (the connection's `OnUpgrade` is in its extensions).
async fn websocket_upgrade(req: &mut ApiRequest) -> ApiResult<WebSocketUpgrade> {
    let (mut parts, ()) = http::Request::builder()
        .method(req.method.clone())
        .version(http::Version::HTTP_11)
        .uri("/")
        .body(())
        .map_err(|e| ApiError::internal(e.to_string()))?
        .into_parts();
    parts.headers = req.headers.clone();
    parts.extensions = std::mem::take(&mut req.extensions);
    WebSocketUpgrade::from_request_parts(&mut parts, &())
        .await
        .map_err(|e| ApiError::bad_request(format!("cannot upgrade to a WebSocket: {e}")))
}

type AgentSocket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Relays messages both ways until either side ends. Pings are answered on each hop, not
/// relayed.
async fn relay(client: WebSocket, agent: AgentSocket) {
    let (mut client_tx, mut client_rx) = client.split();
    let (mut agent_tx, mut agent_rx) = agent.split();
    let up = async {
        while let Some(Ok(msg)) = client_rx.next().await {
            let out = match msg {
                Message::Binary(b) => tungstenite::Message::Binary(b),
                Message::Text(t) => tungstenite::Message::text(t.as_str()),
                Message::Close(frame) => {
                    let _ = agent_tx
                        .send(tungstenite::Message::Close(frame.map(|f| {
                            tungstenite::protocol::CloseFrame {
                                code: f.code.into(),
                                reason: f.reason.as_str().into(),
                            }
                        })))
                        .await;
                    return;
                }
                Message::Ping(_) | Message::Pong(_) => continue,
            };
            if agent_tx.send(out).await.is_err() {
                return;
            }
        }
        // The client went away without a close: end the agent's side too.
        let _ = agent_tx.send(tungstenite::Message::Close(None)).await;
    };
    let down = async {
        while let Some(Ok(msg)) = agent_rx.next().await {
            let out = match msg {
                tungstenite::Message::Binary(b) => Message::Binary(b),
                tungstenite::Message::Text(t) => Message::Text(t.as_str().into()),
                tungstenite::Message::Close(frame) => {
                    let _ = client_tx
                        .send(Message::Close(frame.map(|f| CloseFrame {
                            code: f.code.into(),
                            reason: f.reason.as_str().into(),
                        })))
                        .await;
                    return;
                }
                _ => continue,
            };
            if client_tx.send(out).await.is_err() {
                return;
            }
        }
        let _ = client_tx
            .send(Message::Close(Some(CloseFrame {
                code: axum::extract::ws::close_code::ERROR,
                reason: "the node's agent closed the connection".into(),
            })))
            .await;
    };
    tokio::select! {
        _ = up => {}
        _ = down => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        Container, DaemonEndpoint, NodeAddress, NodeDaemonEndpoints, NodeStatus, PodSpec,
    };

    fn pod(containers: &[&str], init: &[&str]) -> Pod {
        let c = |n: &&str| Container {
            name: n.to_string(),
            ..Default::default()
        };
        Pod {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                name: Some("web".into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                containers: containers.iter().map(c).collect(),
                init_containers: (!init.is_empty()).then(|| init.iter().map(c).collect()),
                ..Default::default()
            }),
            status: None,
        }
    }

    #[test]
    fn containers_are_picked_as_upstream() {
        let cases: Vec<(Pod, Option<&str>, Result<&str, &str>)> = vec![
            (pod(&["a"], &[]), None, Ok("a")),
            (pod(&["a"], &[]), Some(""), Ok("a")),
            (pod(&["a", "b"], &[]), Some("b"), Ok("b")),
            (pod(&["a"], &["init"]), Some("init"), Ok("init")),
            (
                pod(&["a", "b"], &[]),
                None,
                Err("a container name must be specified for pod web, choose one of: [a b]"),
            ),
            (
                pod(&["a", "b"], &["i"]),
                None,
                Err(
                    "a container name must be specified for pod web, choose one of: [a b] or one of the init containers: [i]",
                ),
            ),
            (
                pod(&["a"], &[]),
                Some("x"),
                Err("container x is not valid for pod web"),
            ),
            (
                pod(&[], &[]),
                None,
                Err("a container name must be specified for pod web"),
            ),
        ];
        for (p, requested, want) in cases {
            match (pick_container(&p, requested), want) {
                (Ok(got), Ok(want)) => assert_eq!(got, want),
                (Err(got), Err(want)) => {
                    assert_eq!((got.code, got.message.as_str()), (400, want))
                }
                (got, want) => panic!("{requested:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn log_options_become_the_agents_query() {
        let q = |s: &str| Query::parse(Some(s));
        assert_eq!(log_query(&q(""), "web").unwrap(), "");
        assert_eq!(
            log_query(
                &q("container=a&follow=true&tailLines=10&timestamps=true"),
                "web"
            )
            .unwrap(),
            "follow=true&timestamps=true&tailLines=10"
        );
        assert_eq!(
            log_query(
                &q("previous=1&sinceTime=2024-05-01T10%3A00%3A00Z&limitBytes=5"),
                "web"
            )
            .unwrap(),
            "previous=true&limitBytes=5&sinceTime=2024-05-01T10:00:00Z"
        );
        let err = log_query(&q("tailLines=-1"), "web").unwrap_err();
        assert_eq!(err.code, 422);
        assert_eq!(
            err.message,
            "PodLogOptions \"web\" is invalid: tailLines: Invalid value: -1: must be greater than or equal to 0"
        );
        for bad in ["follow=yes", "tailLines=x", "sinceTime=soon"] {
            assert_eq!(log_query(&q(bad), "web").unwrap_err().code, 400, "{bad}");
        }
        for invalid in [
            "limitBytes=0",
            "sinceSeconds=0",
            "sinceSeconds=5&sinceTime=2024-05-01T10:00:00Z",
        ] {
            assert_eq!(
                log_query(&q(invalid), "web").unwrap_err().code,
                422,
                "{invalid}"
            );
        }
    }

    fn node(addresses: &[(&str, &str)], port: Option<i32>) -> Node {
        Node {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                name: Some("n1".into()),
                ..Default::default()
            },
            spec: None,
            status: Some(NodeStatus {
                addresses: Some(
                    addresses
                        .iter()
                        .map(|(t, a)| NodeAddress {
                            type_: t.to_string(),
                            address: a.to_string(),
                        })
                        .collect(),
                ),
                daemon_endpoints: port.map(|port| NodeDaemonEndpoints {
                    kubelet_endpoint: Some(DaemonEndpoint { port }),
                }),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn agents_are_found_at_the_internal_ip() {
        let cases = [
            (
                node(
                    &[("Hostname", "box"), ("InternalIP", "10.0.0.5")],
                    Some(10250),
                ),
                Ok("10.0.0.5:10250"),
            ),
            (
                node(&[("InternalIP", "10.0.0.5")], Some(20005)),
                Ok("10.0.0.5:20005"),
            ),
            (
                node(&[("InternalIP", "10.0.0.5")], None),
                Ok("10.0.0.5:10250"),
            ),
            (node(&[("ExternalIP", "1.2.3.4")], Some(1)), Ok("1.2.3.4:1")),
            (
                node(&[("InternalIP", "10.0.0.5")], Some(0)),
                Err("the agent of node \"n1\" serves no API (its --port is 0)"),
            ),
            (
                node(&[("Hostname", "box"), ("InternalIP", "nonsense")], Some(1)),
                Err("node \"n1\" reports no InternalIP address"),
            ),
        ];
        for (n, want) in cases {
            let got = agent_address(&n).map(|a| a.to_string());
            assert_eq!(got.as_deref().map_err(String::as_str), want);
        }
    }

    #[test]
    fn agent_refusals_become_statuses() {
        let e = agent_error(
            400,
            b"previous terminated container \"web\" in pod \"web\" not found\n",
            "web",
        );
        assert_eq!((e.code, e.reason), (400, "BadRequest"));
        assert_eq!(
            e.message,
            "previous terminated container \"web\" in pod \"web\" not found"
        );
        let e = agent_error(404, b"pod \"web\" does not exist", "web");
        assert_eq!(
            (e.code, e.reason, e.message.as_str()),
            (404, "NotFound", "pod \"web\" does not exist")
        );
        let e = agent_error(500, b"boom", "web");
        assert_eq!(
            (e.code, e.message.as_str()),
            (500, "Internal error occurred: boom")
        );
        let e = agent_error(502, b"", "web");
        assert_eq!(
            (e.code, e.message.as_str()),
            (502, "the node's agent answered 502")
        );
        assert_eq!(agent_error(302, b"x", "web").code, 500);
    }

    #[test]
    fn exec_protocols_follow_the_client() {
        let mut h = http::HeaderMap::new();
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("v4.channel.k8s.io, base64.channel.k8s.io, v5.channel.k8s.io"),
        );
        assert_eq!(
            offered_protocols(&h),
            vec!["v4.channel.k8s.io", "v5.channel.k8s.io"]
        );
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("SPDY/3.1+portforward.k8s.io"),
        );
        assert!(offered_protocols(&h).is_empty());
        h.insert(header::UPGRADE, HeaderValue::from_static("WebSocket"));
        assert!(wants_websocket(&h));
        h.insert(header::UPGRADE, HeaderValue::from_static("SPDY/3.1"));
        assert!(!wants_websocket(&h));
    }
}
