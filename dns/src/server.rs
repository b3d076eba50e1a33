//! The DNS server: hickory-server's UDP and TCP listeners around a [`Handler`] that answers
//! cluster names from the current [`View`] (through the pure [`resolve`]) and forwards every
//! other name to the `--upstream` resolvers (or refuses it when there are none), as CoreDNS's
//! `kubernetes` and `forward` plugins do together.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hickory_server::Server;
use hickory_server::net::runtime::Time;
use hickory_server::net::xfer::Protocol;
use hickory_server::proto::op::{Edns, Message, MessageType, Metadata, OpCode, ResponseCode};
use hickory_server::proto::rr::{DNSClass, Name, Record};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio_util::sync::CancellationToken;

use crate::resolve::{Answer, Zone, resolve};
use crate::view::View;

/// How long one upstream may take to answer before the next is tried.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a TCP client may stay idle.
const TCP_IDLE: Duration = Duration::from_secs(5);
/// Responses queued per TCP connection.
const TCP_RESPONSE_BUFFER: usize = 32;

/// The view the watchers keep current; readers take a cheap snapshot.
pub type SharedView = Arc<RwLock<Arc<View>>>;

/// Why the server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The address is taken or not ours.
    #[error("cannot listen on {addr} ({proto}): {source}")]
    Bind {
        addr: SocketAddr,
        proto: &'static str,
        source: std::io::Error,
    },
    /// Serving failed.
    #[error("DNS server failed: {0}")]
    Serve(String),
}

/// Counters as CoreDNS names them.
#[derive(Clone, Default)]
pub struct Metrics {
    requests: Family<Vec<(String, String)>, Counter>,
    responses: Family<Vec<(String, String)>, Counter>,
}

impl Metrics {
    /// A registry holding these metrics.
    pub fn registry(&self) -> Registry {
        let mut r = Registry::default();
        r.register(
            "coredns_dns_requests",
            "DNS requests by query type",
            self.requests.clone(),
        );
        r.register(
            "coredns_dns_responses",
            "DNS responses by response code",
            self.responses.clone(),
        );
        r
    }
}

/// Answers requests.
pub struct Handler {
    view: SharedView,
    zone: Zone,
    upstream: Vec<SocketAddr>,
    metrics: Metrics,
}

impl Handler {
    /// A handler answering for `zone` from `view`, forwarding other names to `upstream`.
    pub fn new(
        view: SharedView,
        zone: Zone,
        upstream: Vec<SocketAddr>,
        metrics: Metrics,
    ) -> Handler {
        Handler {
            view,
            zone,
            upstream,
            metrics,
        }
    }

    fn snapshot(&self) -> Arc<View> {
        // A writer that panicked left a whole view behind (it swaps an Arc): keep serving it.
        self.view.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Sends `response`, counting its code; a failed send is logged.
async fn send<'a, R: ResponseHandler>(
    mut handle: R,
    request: &Request,
    metrics: &Metrics,
    response: hickory_server::zone_handler::MessageResponse<
        '_,
        'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
    >,
) -> ResponseInfo {
    let code = response.metadata().response_code;
    metrics
        .responses
        .get_or_create(&vec![("rcode".to_string(), code.to_str().to_string())])
        .inc();
    match handle.send_response(response).await {
        Ok(info) => info,
        Err(e) => {
            tracing::debug!(error = %e, "cannot send a DNS response");
            let mut metadata = Metadata::response_from_request(&request.metadata);
            metadata.response_code = ResponseCode::ServFail;
            ResponseInfo::from(hickory_server::proto::op::Header {
                metadata,
                counts: Default::default(),
            })
        }
    }
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        handle: R,
    ) -> ResponseInfo {
        let edns = request.edns.as_ref().map(|req| {
            let mut e = Edns::new();
            e.set_max_payload(req.max_payload().max(512));
            e.set_version(0);
            e
        });
        let builder = MessageResponseBuilder::new(&request.queries, edns.as_ref());
        let md = &request.metadata;
        if md.message_type != MessageType::Query || md.op_code != OpCode::Query {
            return send(
                handle,
                request,
                &self.metrics,
                builder.error_msg(md, ResponseCode::NotImp),
            )
            .await;
        }
        let Ok(info) = request.request_info() else {
            return send(
                handle,
                request,
                &self.metrics,
                builder.error_msg(md, ResponseCode::FormErr),
            )
            .await;
        };
        let qtype = info.query.query_type();
        self.metrics
            .requests
            .get_or_create(&vec![("type".to_string(), qtype.to_string())])
            .inc();
        if info.query.query_class() != DNSClass::IN {
            return send(
                handle,
                request,
                &self.metrics,
                builder.error_msg(md, ResponseCode::Refused),
            )
            .await;
        }
        let name: Name = info.query.name().clone().into();
        match resolve(&name, qtype, &self.snapshot(), &self.zone) {
            Answer::Authoritative(r) => {
                let mut metadata = Metadata::response_from_request(md);
                metadata.authoritative = true;
                metadata.recursion_available = !self.upstream.is_empty();
                metadata.response_code = r.code;
                let response = builder.build(
                    metadata,
                    r.answers.iter(),
                    r.authority.iter(),
                    std::iter::empty(),
                    r.additionals.iter(),
                );
                send(handle, request, &self.metrics, response).await
            }
            Answer::NotOurs if self.upstream.is_empty() => {
                send(
                    handle,
                    request,
                    &self.metrics,
                    builder.error_msg(md, ResponseCode::Refused),
                )
                .await
            }
            Answer::NotOurs => {
                match forward(request.as_slice(), request.protocol(), &self.upstream).await {
                    Ok(reply) => {
                        let mut metadata = Metadata::response_from_request(md);
                        metadata.recursion_available = reply.metadata.recursion_available;
                        metadata.authoritative = reply.metadata.authoritative;
                        metadata.truncation = reply.metadata.truncation;
                        metadata.response_code = reply.metadata.response_code;
                        let response = builder.build(
                            metadata,
                            reply.answers.iter(),
                            reply.authorities.iter(),
                            std::iter::empty(),
                            reply.additionals.iter(),
                        );
                        send(handle, request, &self.metrics, response).await
                    }
                    Err(e) => {
                        tracing::debug!(name = %name, error = %e, "forwarding failed");
                        send(
                            handle,
                            request,
                            &self.metrics,
                            builder.error_msg(md, ResponseCode::ServFail),
                        )
                        .await
                    }
                }
            }
        }
    }
}

/// Asks each upstream in turn; a truncated UDP answer is retried over TCP when the client
/// itself came over TCP (a UDP client gets the TC bit and retries with TCP itself).
async fn forward(
    query: &[u8],
    client: Protocol,
    upstream: &[SocketAddr],
) -> Result<Message, String> {
    let mut last = String::from("no upstream");
    for &server in upstream {
        let result = match tokio::time::timeout(FORWARD_TIMEOUT, forward_udp(query, server)).await {
            Ok(Ok(reply)) if reply.metadata.truncation && client == Protocol::Tcp => {
                tokio::time::timeout(FORWARD_TIMEOUT, forward_tcp(query, server))
                    .await
                    .unwrap_or_else(|_| Err("timed out".into()))
            }
            Ok(r) => r,
            Err(_) => Err("timed out".into()),
        };
        match result {
            Ok(reply) => return Ok(reply),
            Err(e) => last = format!("{server}: {e}"),
        }
    }
    Err(last)
}

async fn forward_udp(query: &[u8], server: SocketAddr) -> Result<Message, String> {
    let local: SocketAddr = if server.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        ([0u16; 8], 0).into()
    };
    let sock = UdpSocket::bind(local).await.map_err(|e| e.to_string())?;
    sock.connect(server).await.map_err(|e| e.to_string())?;
    sock.send(query).await.map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 65535];
    loop {
        let n = sock.recv(&mut buf).await.map_err(|e| e.to_string())?;
        // Ignore stray datagrams that do not answer this query's ID.
        if n >= 2 && query.len() >= 2 && buf[..2] == query[..2] {
            return Message::from_vec(&buf[..n]).map_err(|e| format!("bad answer: {e}"));
        }
    }
}

async fn forward_tcp(query: &[u8], server: SocketAddr) -> Result<Message, String> {
    let len = u16::try_from(query.len()).map_err(|_| "query too long".to_string())?;
    let mut s = TcpStream::connect(server)
        .await
        .map_err(|e| e.to_string())?;
    let mut out = Vec::with_capacity(query.len() + 2);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(query);
    s.write_all(&out).await.map_err(|e| e.to_string())?;
    let n = s.read_u16().await.map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; usize::from(n)];
    s.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
    Message::from_vec(&buf).map_err(|e| format!("bad answer: {e}"))
}

/// The UDP socket and TCP listener on one address (with port 0, both on the port UDP got).
pub async fn bind(addr: SocketAddr) -> Result<(UdpSocket, TcpListener), ServerError> {
    let udp = UdpSocket::bind(addr)
        .await
        .map_err(|source| ServerError::Bind {
            addr,
            proto: "udp",
            source,
        })?;
    let port = udp
        .local_addr()
        .map_err(|source| ServerError::Bind {
            addr,
            proto: "udp",
            source,
        })?
        .port();
    let tcp_addr = SocketAddr::new(addr.ip(), port);
    let tcp = TcpListener::bind(tcp_addr)
        .await
        .map_err(|source| ServerError::Bind {
            addr: tcp_addr,
            proto: "tcp",
            source,
        })?;
    Ok((udp, tcp))
}

/// Serves DNS on the bound sockets until `shutdown`.
pub async fn serve(
    handler: Handler,
    udp: UdpSocket,
    tcp: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), ServerError> {
    let mut server = Server::new(handler);
    server.register_socket(udp);
    server.register_listener(tcp, TCP_IDLE, TCP_RESPONSE_BUFFER);
    let result = tokio::select! {
        _ = shutdown.cancelled() => server.shutdown_gracefully().await,
        r = server.block_until_done() => r,
    };
    result.map_err(|e| ServerError::Serve(e.to_string()))
}
