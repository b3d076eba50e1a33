//! `GET /containerLogs/{namespace}/{pod}/{container}`: a container's log from the runtime, as
//! kubelet serves it. Options are upstream's `PodLogOptions` (`follow`, `tailLines`,
//! `timestamps`, `previous`, `sinceSeconds`, `sinceTime`, `limitBytes`); which container
//! attempt is read follows kubelet's `validateContainerLogStatus`: the current one, or with
//! `previous` the one that terminated before it.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::ContainerStatus;

use super::io::{IoError, LogRequest};
use super::{NodeServer, ServeError, has_container, runtime_id};

/// The log options of one request, checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogOptions {
    pub follow: bool,
    pub previous: bool,
    pub timestamps: bool,
    pub tail_lines: Option<u64>,
    pub since_seconds: Option<i64>,
    pub since_time: Option<Timestamp>,
    pub limit_bytes: Option<u64>,
}

/// A boolean query parameter as Go's `strconv.ParseBool` reads it.
pub fn parse_bool(name: &str, value: &str) -> Result<bool, ServeError> {
    match value {
        "" | "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        _ => Err(ServeError::BadRequest(format!(
            "{name}: invalid value {value:?}: must be true or false"
        ))),
    }
}

fn parse_int(name: &str, value: &str) -> Result<i64, ServeError> {
    value.parse().map_err(|_| {
        ServeError::BadRequest(format!(
            "{name}: invalid value {value:?}: must be an integer"
        ))
    })
}

/// Reads and checks the query (`key=value` pairs, repeated keys keep the last).
pub fn parse_options(pairs: &[(String, String)]) -> Result<LogOptions, ServeError> {
    let mut o = LogOptions::default();
    let mut tail = None;
    let mut limit = None;
    for (k, v) in pairs {
        match k.as_str() {
            "follow" => o.follow = parse_bool(k, v)?,
            "previous" => o.previous = parse_bool(k, v)?,
            "timestamps" => o.timestamps = parse_bool(k, v)?,
            "tailLines" => tail = Some(parse_int(k, v)?),
            "limitBytes" => limit = Some(parse_int(k, v)?),
            "sinceSeconds" => o.since_seconds = Some(parse_int(k, v)?),
            "sinceTime" => {
                o.since_time = Some(v.parse().map_err(|_| {
                    ServeError::BadRequest(format!(
                        "sinceTime: invalid value {v:?}: must be an RFC 3339 time"
                    ))
                })?)
            }
            // Upstream ignores what it does not know (`container`, `insecureSkipTLSVerifyBackend`).
            _ => {}
        }
    }
    // Upstream's ValidatePodLogOptions.
    o.tail_lines = match tail {
        Some(n) if n < 0 => {
            return Err(ServeError::BadRequest(format!(
                "tailLines: Invalid value: {n}: must be greater than or equal to 0"
            )));
        }
        n => n.map(|n| n as u64),
    };
    o.limit_bytes = match limit {
        Some(n) if n < 1 => {
            return Err(ServeError::BadRequest(format!(
                "limitBytes: Invalid value: {n}: must be greater than 0"
            )));
        }
        n => n.map(|n| n as u64),
    };
    if let Some(s) = o.since_seconds {
        if s < 1 {
            return Err(ServeError::BadRequest(format!(
                "sinceSeconds: Invalid value: {s}: must be greater than 0"
            )));
        }
        if o.since_time.is_some() {
            return Err(ServeError::BadRequest(
                "sinceSeconds: Forbidden: at most one of `sinceTime` or `sinceSeconds` may be specified".into(),
            ));
        }
    }
    Ok(o)
}

/// The runtime's request for `options` at `now`.
pub fn log_request(options: &LogOptions, now: Timestamp) -> LogRequest {
    let since = match (options.since_seconds, options.since_time) {
        (Some(s), _) => Some(now.as_second().saturating_sub(s)),
        (None, Some(t)) => Some(t.as_second()),
        (None, None) => None,
    };
    LogRequest {
        follow: options.follow,
        tail_lines: options.tail_lines,
        timestamps: options.timestamps,
        since,
    }
}

/// The runtime id of the container attempt whose log to read (kubelet's
/// `validateContainerLogStatus`); an error says why there is none, in upstream's words.
pub fn log_container_id(
    statuses: &[ContainerStatus],
    pod: &str,
    container: &str,
    previous: bool,
) -> Result<String, ServeError> {
    let bad = |why: String| Err(ServeError::BadRequest(why));
    let Some(status) = statuses.iter().find(|s| s.name == container) else {
        return bad(format!(
            "container {container:?} in pod {pod:?} is not available"
        ));
    };
    let id_of = |id: &Option<String>| {
        id.as_deref()
            .filter(|id| !id.is_empty())
            .map(|id| runtime_id(id).to_string())
    };
    let last = status
        .last_state
        .as_ref()
        .and_then(|s| s.terminated.as_ref());
    let state = status.state.clone().unwrap_or_default();
    if previous {
        return match last.and_then(|t| id_of(&t.container_id)) {
            Some(id) => Ok(id),
            None => bad(format!(
                "previous terminated container {container:?} in pod {pod:?} not found"
            )),
        };
    }
    if state.running.is_some() {
        return match id_of(&status.container_id) {
            Some(id) => Ok(id),
            None => bad(format!(
                "container {container:?} in pod {pod:?} is waiting to start - no logs yet"
            )),
        };
    }
    if let Some(t) = &state.terminated {
        // The next attempt may not have started: then the last one has the log.
        return match id_of(&t.container_id).or_else(|| last.and_then(|l| id_of(&l.container_id))) {
            Some(id) => Ok(id),
            None => bad(format!(
                "container {container:?} in pod {pod:?} is terminated"
            )),
        };
    }
    if let Some(last) = last {
        return match id_of(&last.container_id) {
            Some(id) => Ok(id),
            None => bad(format!(
                "container {container:?} in pod {pod:?} is terminated"
            )),
        };
    }
    match state.waiting.and_then(|w| w.reason) {
        Some(r) if r == "ErrImagePull" => bad(format!(
            "container {container:?} in pod {pod:?} is waiting to start: image can't be pulled"
        )),
        Some(r) if r == "ImagePullBackOff" => bad(format!(
            "container {container:?} in pod {pod:?} is waiting to start: trying and failing to pull image"
        )),
        Some(r) => bad(format!(
            "container {container:?} in pod {pod:?} is waiting to start: {r}"
        )),
        None => bad(format!(
            "container {container:?} in pod {pod:?} is waiting to start - no logs yet"
        )),
    }
}

/// At most `limit` bytes of `stream` (all of it without a limit); the stream ends there.
pub fn limit_bytes(
    stream: BoxStream<'static, Result<Bytes, IoError>>,
    limit: Option<u64>,
) -> BoxStream<'static, Result<Bytes, IoError>> {
    let Some(limit) = limit else { return stream };
    futures::stream::unfold((stream, limit), |(mut stream, left)| async move {
        if left == 0 {
            return None;
        }
        let item = stream.next().await?;
        Some(match item {
            Ok(mut chunk) => {
                let keep = usize::try_from(left).unwrap_or(usize::MAX).min(chunk.len());
                chunk.truncate(keep);
                let left = left - keep as u64;
                (Ok(chunk), (stream, left))
            }
            // An error ends the stream after it is passed on.
            Err(e) => (Err(e), (stream, 0)),
        })
    })
    .boxed()
}

/// The handler.
pub async fn handle(
    State(server): State<Arc<NodeServer>>,
    Path((namespace, pod, container)): Path<(String, String, String)>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Response {
    match container_log(&server, &namespace, &pod, &container, &pairs).await {
        Ok(body) => {
            let mut resp = Response::new(body);
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            resp
        }
        Err(e) => e.into_response(),
    }
}

async fn container_log(
    server: &NodeServer,
    namespace: &str,
    pod: &str,
    container: &str,
    pairs: &[(String, String)],
) -> Result<Body, ServeError> {
    let options = parse_options(pairs)?;
    let view = server.pod_view(namespace, pod).await?;
    if !has_container(&view.pod, container) {
        return Err(ServeError::NotFound(format!(
            "container {container:?} not found in pod {pod:?}"
        )));
    }
    let id = log_container_id(&view.statuses, pod, container, options.previous)?;
    let stream = server
        .io
        .logs(&id, &log_request(&options, Timestamp::now()))
        .await?;
    Ok(Body::from_stream(limit_bytes(stream, options.limit_bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    };

    fn pairs(q: &[(&str, &str)]) -> Vec<(String, String)> {
        q.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn options_are_read_and_checked_as_upstream() {
        let ok = [
            (vec![], LogOptions::default()),
            (
                vec![("follow", "true"), ("tailLines", "10"), ("timestamps", "1")],
                LogOptions {
                    follow: true,
                    timestamps: true,
                    tail_lines: Some(10),
                    ..Default::default()
                },
            ),
            (
                vec![
                    ("previous", "True"),
                    ("limitBytes", "5"),
                    ("container", "x"),
                ],
                LogOptions {
                    previous: true,
                    limit_bytes: Some(5),
                    ..Default::default()
                },
            ),
            (
                vec![("sinceSeconds", "60"), ("tailLines", "0")],
                LogOptions {
                    since_seconds: Some(60),
                    tail_lines: Some(0),
                    ..Default::default()
                },
            ),
        ];
        for (q, want) in ok {
            assert_eq!(parse_options(&pairs(&q)).unwrap(), want, "{q:?}");
        }
        let bad = [
            (vec![("follow", "yes")], "follow: invalid value"),
            (vec![("tailLines", "x")], "tailLines: invalid value"),
            (vec![("tailLines", "-1")], "tailLines: Invalid value: -1"),
            (vec![("limitBytes", "0")], "limitBytes: Invalid value: 0"),
            (
                vec![("sinceSeconds", "0")],
                "sinceSeconds: Invalid value: 0",
            ),
            (vec![("sinceTime", "yesterday")], "sinceTime: invalid value"),
            (
                vec![("sinceSeconds", "5"), ("sinceTime", "2024-01-01T00:00:00Z")],
                "at most one of",
            ),
        ];
        for (q, want) in bad {
            let err = parse_options(&pairs(&q)).unwrap_err();
            assert!(
                matches!(&err, ServeError::BadRequest(m) if m.contains(want)),
                "{q:?}: {err:?}"
            );
        }
    }

    #[test]
    fn requests_for_the_runtime() {
        let now: Timestamp = "2024-05-01T10:00:00Z".parse().unwrap();
        let since = |o: LogOptions| log_request(&o, now).since;
        assert_eq!(since(LogOptions::default()), None);
        assert_eq!(
            since(LogOptions {
                since_seconds: Some(60),
                ..Default::default()
            }),
            Some(now.as_second() - 60)
        );
        assert_eq!(
            since(LogOptions {
                since_time: Some("2024-05-01T09:00:00Z".parse().unwrap()),
                ..Default::default()
            }),
            Some(now.as_second() - 3600)
        );
    }

    fn running() -> ContainerState {
        ContainerState {
            running: Some(ContainerStateRunning::default()),
            ..Default::default()
        }
    }

    fn terminated(id: &str) -> ContainerState {
        ContainerState {
            terminated: Some(ContainerStateTerminated {
                container_id: (!id.is_empty()).then(|| format!("docker://{id}")),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn waiting(reason: &str) -> ContainerState {
        ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some(reason.into()),
                message: None,
            }),
            ..Default::default()
        }
    }

    fn status(
        id: Option<&str>,
        state: ContainerState,
        last: Option<ContainerState>,
    ) -> ContainerStatus {
        ContainerStatus {
            name: "web".into(),
            container_id: id.map(|i| format!("docker://{i}")),
            state: Some(state),
            last_state: last,
            ..Default::default()
        }
    }

    #[test]
    fn the_attempt_read_follows_kubelet() {
        let cases: Vec<(ContainerStatus, bool, Result<&str, &str>)> = vec![
            (status(Some("a2"), running(), None), false, Ok("a2")),
            (
                status(Some("a2"), running(), None),
                true,
                Err("previous terminated container \"web\" in pod \"p\" not found"),
            ),
            (
                status(Some("a2"), running(), Some(terminated("a1"))),
                true,
                Ok("a1"),
            ),
            // Crash loop: the current log is the last attempt's, and so is `previous`.
            (
                status(
                    Some("a1"),
                    waiting("CrashLoopBackOff"),
                    Some(terminated("a1")),
                ),
                false,
                Ok("a1"),
            ),
            (
                status(
                    Some("a1"),
                    waiting("CrashLoopBackOff"),
                    Some(terminated("a1")),
                ),
                true,
                Ok("a1"),
            ),
            (status(Some("a0"), terminated("a0"), None), false, Ok("a0")),
            (
                status(None, terminated(""), Some(terminated("a0"))),
                false,
                Ok("a0"),
            ),
            (
                status(None, terminated(""), None),
                false,
                Err("container \"web\" in pod \"p\" is terminated"),
            ),
            (
                status(None, waiting("ContainerCreating"), None),
                false,
                Err("container \"web\" in pod \"p\" is waiting to start: ContainerCreating"),
            ),
            (
                status(None, waiting("ErrImagePull"), None),
                false,
                Err("container \"web\" in pod \"p\" is waiting to start: image can't be pulled"),
            ),
            (
                status(None, waiting("ImagePullBackOff"), None),
                false,
                Err(
                    "container \"web\" in pod \"p\" is waiting to start: trying and failing to pull image",
                ),
            ),
            (
                status(None, ContainerState::default(), None),
                false,
                Err("container \"web\" in pod \"p\" is waiting to start - no logs yet"),
            ),
        ];
        for (st, previous, want) in cases {
            let got = log_container_id(std::slice::from_ref(&st), "p", "web", previous);
            let want = want
                .map(String::from)
                .map_err(|m| ServeError::BadRequest(m.to_string()));
            assert_eq!(got, want, "{st:?} previous={previous}");
        }
        assert_eq!(
            log_container_id(&[], "p", "web", false),
            Err(ServeError::BadRequest(
                "container \"web\" in pod \"p\" is not available".into()
            ))
        );
    }

    #[tokio::test]
    async fn limits_cut_the_stream() {
        let chunks = || {
            futures::stream::iter(
                ["abc", "def", "gh"].map(|s| Ok::<_, IoError>(Bytes::from_static(s.as_bytes()))),
            )
            .boxed()
        };
        let collect = |s: BoxStream<'static, Result<Bytes, IoError>>| async move {
            String::from_utf8(s.map(|c| c.unwrap().to_vec()).concat().await).unwrap()
        };
        assert_eq!(collect(limit_bytes(chunks(), None)).await, "abcdefgh");
        assert_eq!(collect(limit_bytes(chunks(), Some(4))).await, "abcd");
        assert_eq!(collect(limit_bytes(chunks(), Some(3))).await, "abc");
        assert_eq!(collect(limit_bytes(chunks(), Some(100))).await, "abcdefgh");
    }
}
