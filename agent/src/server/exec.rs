//! `/exec/{namespace}/{pod}/{container}?command=..&input=1&output=1&error=1&tty=1`: a command in
//! a running container, over a WebSocket speaking upstream's channel protocol
//! (`v5.channel.k8s.io`, or `v4.channel.k8s.io`). Every binary message starts with its channel:
//! 0 stdin, 1 stdout, 2 stderr, 3 the final status (a `Status` JSON), 4 terminal resize
//! (`{"Width":80,"Height":24}`), and with v5, 255 closes the stream named by the next byte
//! (`[255, 0]`: end of stdin). The session ends with the status and a close frame.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::stream::SplitStream;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use super::io::{ContainerIo, ExecControl, ExecOutput, ExecSpec};
use super::logs::parse_bool;
use super::{NodeServer, ServeError, has_container, runtime_id};

/// The subprotocols spoken, most preferred first.
pub const PROTOCOLS: [&str; 2] = ["v5.channel.k8s.io", "v4.channel.k8s.io"];
/// Largest message accepted from a client (kubectl sends stdin in chunks of a few KiB).
pub const MAX_MESSAGE: usize = 1024 * 1024;

pub const STDIN: u8 = 0;
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
pub const STATUS: u8 = 3;
pub const RESIZE: u8 = 4;
pub const CLOSE: u8 = 255;

/// How often, and how many times, the exit code is asked for once the output has ended
/// (the runtime records it a moment after the process closes its output).
const EXIT_POLL: Duration = Duration::from_millis(50);
const EXIT_POLLS: u32 = 200;

/// Reads the exec query as kubelet does (`input`/`output`/`error`/`tty`; the apiserver's
/// `stdin`/`stdout`/`stderr` names are accepted too).
pub fn parse_options(pairs: &[(String, String)]) -> Result<ExecSpec, ServeError> {
    let mut spec = ExecSpec {
        command: Vec::new(),
        stdin: false,
        stdout: false,
        stderr: false,
        tty: false,
    };
    for (k, v) in pairs {
        match k.as_str() {
            "command" => spec.command.push(v.clone()),
            "input" | "stdin" => spec.stdin = parse_bool(k, v)?,
            "output" | "stdout" => spec.stdout = parse_bool(k, v)?,
            "error" | "stderr" => spec.stderr = parse_bool(k, v)?,
            "tty" => spec.tty = parse_bool(k, v)?,
            _ => {}
        }
    }
    if spec.command.is_empty() {
        return Err(ServeError::BadRequest(
            "you must specify at least one command for the container".into(),
        ));
    }
    // A terminal merges both outputs (upstream drops stderr the same way).
    if spec.tty {
        spec.stderr = false;
    }
    if !(spec.stdin || spec.stdout || spec.stderr) {
        return Err(ServeError::BadRequest(
            "you must specify at least 1 of stdin, stdout, stderr".into(),
        ));
    }
    Ok(spec)
}

/// A message on `channel`.
pub fn frame(channel: u8, data: &[u8]) -> Bytes {
    let mut v = Vec::with_capacity(data.len() + 1);
    v.push(channel);
    v.extend_from_slice(data);
    Bytes::from(v)
}

/// What a client's message asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    /// Bytes for the command's input.
    Stdin(Bytes),
    /// The input has ended (v5 only).
    CloseStdin,
    /// The terminal's new size.
    Resize { width: u16, height: u16 },
    /// Nothing to act on (an empty message, a close of another stream, an unknown channel).
    Ignored,
}

/// Reads one binary message from the client; an error names what is wrong with it.
pub fn decode_inbound(v5: bool, msg: &[u8]) -> Result<Inbound, String> {
    let Some((&channel, data)) = msg.split_first() else {
        return Ok(Inbound::Ignored);
    };
    match channel {
        STDIN if data.is_empty() => Ok(Inbound::Ignored),
        STDIN => Ok(Inbound::Stdin(Bytes::copy_from_slice(data))),
        RESIZE => {
            #[derive(serde::Deserialize)]
            #[serde(rename_all = "PascalCase")]
            struct Size {
                width: u16,
                height: u16,
            }
            let size: Size =
                serde_json::from_slice(data).map_err(|e| format!("bad resize message: {e}"))?;
            Ok(Inbound::Resize {
                width: size.width,
                height: size.height,
            })
        }
        CLOSE if v5 && data.first() == Some(&STDIN) => Ok(Inbound::CloseStdin),
        _ => Ok(Inbound::Ignored),
    }
}

/// The final status for a command that exited with `code` (`None`: unknown).
pub fn exit_status(code: Option<i64>, command: &[String]) -> Value {
    match code {
        Some(0) => json!({"metadata": {}, "status": "Success"}),
        Some(code) => json!({
            "metadata": {},
            "status": "Failure",
            "message": format!(
                "command terminated with non-zero exit code: error executing command {command:?}, exit code {code}"
            ),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
        }),
        None => error_status("the command's exit code could not be read from the runtime"),
    }
}

/// The final status for a session that failed.
pub fn error_status(message: &str) -> Value {
    json!({
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": "InternalError",
        "details": {"causes": [{"message": message}]},
        "code": 500,
    })
}

/// The handler: checks the request and the container, then upgrades.
pub async fn handle(
    State(server): State<Arc<NodeServer>>,
    Path((namespace, pod, container)): Path<(String, String, String)>,
    Query(pairs): Query<Vec<(String, String)>>,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    match prepare(&server, &namespace, &pod, &container, &pairs).await {
        Ok((id, spec)) => upgrade(ws, server.io.clone(), id, spec),
        Err(e) => e.into_response(),
    }
}

/// The running container's runtime id and the command to run.
async fn prepare(
    server: &NodeServer,
    namespace: &str,
    pod: &str,
    container: &str,
    pairs: &[(String, String)],
) -> Result<(String, ExecSpec), ServeError> {
    let spec = parse_options(pairs)?;
    let view = server.pod_view(namespace, pod).await?;
    if !has_container(&view.pod, container) {
        return Err(ServeError::NotFound(format!(
            "container {container:?} not found in pod {pod:?}"
        )));
    }
    let running = view
        .statuses
        .iter()
        .find(|s| s.name == container)
        .filter(|s| s.state.as_ref().is_some_and(|st| st.running.is_some()))
        .and_then(|s| s.container_id.as_deref());
    match running {
        Some(id) => Ok((runtime_id(id).to_string(), spec)),
        None => Err(ServeError::NotFound(format!(
            "container not found ({container:?}): it is not running"
        ))),
    }
}

fn upgrade(
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
    io: Arc<dyn ContainerIo>,
    id: String,
    spec: ExecSpec,
) -> Response {
    let ws = match ws {
        Ok(ws) => ws,
        Err(e) => {
            return ServeError::BadRequest(format!(
                "exec needs a WebSocket upgrade with subprotocol {} ({e})",
                PROTOCOLS.join(" or ")
            ))
            .into_response();
        }
    };
    let ws = ws.protocols(PROTOCOLS);
    let v5 = match ws.selected_protocol().and_then(|p| p.to_str().ok()) {
        Some(p) => p == PROTOCOLS[0],
        None => {
            return ServeError::BadRequest(format!(
                "unable to negotiate a WebSocket subprotocol: this agent speaks {}",
                PROTOCOLS.join(", ")
            ))
            .into_response();
        }
    };
    ws.max_message_size(MAX_MESSAGE)
        .max_frame_size(MAX_MESSAGE)
        .on_upgrade(move |socket| session(socket, v5, io, id, spec))
}

/// One exec session on an upgraded connection.
pub async fn session(
    socket: WebSocket,
    v5: bool,
    io: Arc<dyn ContainerIo>,
    id: String,
    spec: ExecSpec,
) {
    let (mut sink, stream) = socket.split();
    let status = match io.exec(&id, &spec).await {
        Err(e) => error_status(&e.to_string()),
        Ok(session) => {
            let control: Arc<dyn ExecControl> = Arc::from(session.control);
            // Input has a task of its own, so that a command not reading its input never
            // holds up its output.
            let mut reader = tokio::spawn(read_input(stream, v5, session.input, control.clone()));
            let mut output = session.output;
            let mut failed = None;
            loop {
                let chunk = tokio::select! {
                    chunk = output.next() => chunk,
                    // The client closed or went away: nobody reads the output any more. Dropping
                    // the runtime's streams ends the session (a command that outlives its
                    // output then runs on unobserved, as upstream's do).
                    _ = &mut reader => return,
                };
                let msg = match chunk {
                    None => break,
                    Some(Ok(ExecOutput::Stdout(b))) => frame(STDOUT, &b),
                    Some(Ok(ExecOutput::Stderr(b))) => frame(STDERR, &b),
                    Some(Err(e)) => {
                        failed = Some(e.to_string());
                        break;
                    }
                };
                if sink.send(Message::Binary(msg)).await.is_err() {
                    // The client went away.
                    reader.abort();
                    return;
                }
            }
            drop(output);
            reader.abort();
            match failed {
                Some(e) => error_status(&e),
                None => exit_status(exit_code(control.as_ref()).await, &spec.command),
            }
        }
    };
    let _ = sink
        .send(Message::Binary(frame(
            STATUS,
            status.to_string().as_bytes(),
        )))
        .await;
    let _ = sink
        .send(Message::Close(Some(CloseFrame {
            code: axum::extract::ws::close_code::NORMAL,
            reason: "".into(),
        })))
        .await;
}

/// The exit code once the runtime has it.
async fn exit_code(control: &dyn ExecControl) -> Option<i64> {
    for _ in 0..EXIT_POLLS {
        match control.exit_code().await {
            Ok(Some(code)) => return Some(code),
            Ok(None) => tokio::time::sleep(EXIT_POLL).await,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read an exec's exit code");
                return None;
            }
        }
    }
    None
}

/// Passes the client's input and resizes on until it closes.
async fn read_input(
    mut stream: SplitStream<WebSocket>,
    v5: bool,
    mut input: Option<std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>>,
    control: Arc<dyn ExecControl>,
) {
    while let Some(Ok(msg)) = stream.next().await {
        let data = match msg {
            Message::Binary(b) => b,
            Message::Close(_) => break,
            _ => continue,
        };
        match decode_inbound(v5, &data) {
            Ok(Inbound::Stdin(bytes)) => {
                if let Some(w) = input.as_mut()
                    && (w.write_all(&bytes).await.is_err() || w.flush().await.is_err())
                {
                    // The command closed its input; later input has nowhere to go.
                    input = None;
                }
            }
            Ok(Inbound::CloseStdin) => {
                if let Some(mut w) = input.take() {
                    let _ = w.shutdown().await;
                }
            }
            Ok(Inbound::Resize { width, height }) => {
                if let Err(e) = control.resize(width, height).await {
                    tracing::debug!(error = %e, "cannot resize an exec's terminal");
                }
            }
            Ok(Inbound::Ignored) => {}
            Err(e) => tracing::debug!(error = %e, "ignoring a bad exec message"),
        }
    }
    if let Some(mut w) = input {
        let _ = w.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(q: &[(&str, &str)]) -> Vec<(String, String)> {
        q.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn options_follow_kubelet() {
        let spec = parse_options(&pairs(&[
            ("command", "ls"),
            ("command", "-l"),
            ("command", "/"),
            ("output", "1"),
            ("error", "1"),
        ]))
        .unwrap();
        assert_eq!(spec.command, ["ls", "-l", "/"]);
        assert!(spec.stdout && spec.stderr && !spec.stdin && !spec.tty);
        let spec = parse_options(&pairs(&[
            ("command", "sh"),
            ("stdin", "true"),
            ("stdout", "true"),
            ("stderr", "true"),
            ("tty", "true"),
        ]))
        .unwrap();
        assert!(spec.stdin && spec.stdout && spec.tty && !spec.stderr);
        for (q, want) in [
            (vec![("output", "1")], "at least one command"),
            (
                vec![("command", "ls")],
                "at least 1 of stdin, stdout, stderr",
            ),
            (
                vec![("command", "ls"), ("output", "maybe")],
                "output: invalid value",
            ),
        ] {
            let err = parse_options(&pairs(&q)).unwrap_err();
            assert!(
                matches!(&err, ServeError::BadRequest(m) if m.contains(want)),
                "{q:?}: {err:?}"
            );
        }
    }

    #[test]
    fn client_messages() {
        let cases: Vec<(bool, &[u8], Result<Inbound, &str>)> = vec![
            (
                true,
                b"\x00abc",
                Ok(Inbound::Stdin(Bytes::from_static(b"abc"))),
            ),
            (true, b"\x00", Ok(Inbound::Ignored)),
            (true, b"", Ok(Inbound::Ignored)),
            (true, b"\xff\x00", Ok(Inbound::CloseStdin)),
            (false, b"\xff\x00", Ok(Inbound::Ignored)),
            (true, b"\xff\x01", Ok(Inbound::Ignored)),
            (
                true,
                b"\x04{\"Width\":80,\"Height\":24}",
                Ok(Inbound::Resize {
                    width: 80,
                    height: 24,
                }),
            ),
            (true, b"\x04{\"Width\":-1}", Err("bad resize message")),
            (true, b"\x07xyz", Ok(Inbound::Ignored)),
        ];
        for (v5, msg, want) in cases {
            match (decode_inbound(v5, msg), want) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{msg:?}"),
                (Err(got), Err(want)) => assert!(got.contains(want), "{got}"),
                (got, want) => panic!("{msg:?}: got {got:?}, want {want:?}"),
            }
        }
        assert_eq!(frame(STDOUT, b"hi"), Bytes::from_static(b"\x01hi"));
    }

    #[test]
    fn statuses_are_what_kubectl_reads() {
        let cmd = vec!["/demo".to_string(), "exit".into(), "3".into()];
        assert_eq!(
            exit_status(Some(0), &cmd),
            json!({"metadata": {}, "status": "Success"})
        );
        let s = exit_status(Some(3), &cmd);
        assert_eq!(s["status"], "Failure");
        assert_eq!(s["reason"], "NonZeroExitCode");
        assert_eq!(
            s["details"]["causes"],
            json!([{"reason": "ExitCode", "message": "3"}])
        );
        let s = exit_status(None, &cmd);
        assert_eq!(
            (s["status"].as_str(), s["reason"].as_str()),
            (Some("Failure"), Some("InternalError"))
        );
    }
}
