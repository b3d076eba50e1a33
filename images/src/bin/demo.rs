//! `miniorch/demo`: the workload of the examples and tests, one small static binary.
//!
//! `demo [serve]` answers HTTP on port 8080 (`$PORT`) with the hostname, which is the pod name
//! inside a pod, so a learner can see which replica answered; `demo exit CODE [--after SECS]`
//! and `demo sleep SECS` give tests containers that finish or linger on purpose; `demo count`
//! writes a known log; `demo echo`, `demo cat` and `demo ls` stand in for the shell tools the
//! image lacks, for `kubectl exec`. Every subcommand exits 0 at once on SIGTERM or SIGINT so
//! that stopping a pod never waits out the grace period.
//!
//! std only (plus the signal mask from `miniorch_images`): one thread per connection, bounded
//! in number, each request head bounded in size and every socket read under a timeout.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use miniorch_images::signals::{self, SIGINT, SIGTERM, SignalSet};

const USAGE: &str = "usage:
  demo [serve] [--port PORT]      answer HTTP GET / with the hostname (port: $PORT or 8080)
  demo exit CODE [--after SECS]   exit with CODE (0-255), after SECS seconds if given
  demo sleep SECS                 sleep SECS seconds, then exit 0
  demo count N [--every SECS]     print \"line 1\" to \"line N\", SECS apart, then keep running
  demo echo [--stderr] WORDS...   print WORDS (to standard error with --stderr)
  demo cat                        copy standard input to standard output
  demo ls [DIR]                   list the entries of DIR (default /), one per line
  demo help                       print this text";

/// Longest request head (request line and headers) accepted before answering 431.
const MAX_HEAD: usize = 8 * 1024;
/// Largest request body read (and discarded); bigger ones get 413 and the connection closes.
const MAX_BODY: u64 = 1024 * 1024;
/// Connections served at once; more are answered 503 and closed.
const MAX_CONNECTIONS: usize = 1024;
/// An idle or stalled connection is closed after this long.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// What the command line asked for.
#[derive(Debug, Clone, PartialEq)]
enum Command {
    /// Serve HTTP on this port.
    Serve { port: u16 },
    /// Exit with `code`, after waiting `after` if given.
    Exit { code: i32, after: Option<Duration> },
    /// Sleep, then exit 0.
    Sleep(Duration),
    /// Print `lines` numbered lines `every` apart, then keep running.
    Count { lines: u64, every: Duration },
    /// Print words to stdout (or stderr).
    Echo { stderr: bool, words: Vec<String> },
    /// Copy stdin to stdout.
    Cat,
    /// List a directory.
    Ls(String),
    /// Print the usage.
    Help,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = match parse_args(&args, std::env::var("PORT").ok().as_deref()) {
        Ok(command) => command,
        Err(e) => {
            eprintln!("demo: {e}\n{USAGE}");
            std::process::exit(2);
        }
    };
    // Blocked before any thread starts, so every thread inherits the mask and only the waiter
    // below ever takes these signals.
    match SignalSet::block(&[SIGINT, SIGTERM]) {
        Ok(set) => {
            std::thread::spawn(move || {
                let signal = set.wait();
                let name = signal.map(signals::name).unwrap_or("signal");
                println!("demo: {name} received, exiting");
                std::process::exit(0);
            });
        }
        Err(e) => eprintln!("demo: cannot block signals ({e}); SIGTERM will not stop it early"),
    }
    match command {
        Command::Help => println!("{USAGE}"),
        Command::Exit { code, after } => {
            if let Some(after) = after {
                println!("demo: exiting with code {code} in {}s", after.as_secs_f64());
                std::thread::sleep(after);
            }
            println!("demo: exiting with code {code}");
            std::process::exit(code);
        }
        Command::Sleep(duration) => {
            println!("demo: sleeping {}s", duration.as_secs_f64());
            std::thread::sleep(duration);
        }
        Command::Serve { port } => {
            if let Err(e) = serve(port) {
                eprintln!("demo: {e}");
                std::process::exit(1);
            }
        }
        Command::Count { lines, every } => {
            for n in 1..=lines {
                println!("line {n}");
                if n < lines {
                    std::thread::sleep(every);
                }
            }
            // Keep running (the signal thread ends the process).
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        Command::Echo { stderr, words } => {
            if stderr {
                eprintln!("{}", words.join(" "));
            } else {
                println!("{}", words.join(" "));
            }
        }
        Command::Cat => {
            if let Err(e) = io::copy(&mut io::stdin().lock(), &mut io::stdout().lock()) {
                eprintln!("demo: cat: {e}");
                std::process::exit(1);
            }
        }
        Command::Ls(dir) => match list_dir(&dir) {
            Ok(names) => {
                for name in names {
                    println!("{name}");
                }
            }
            Err(e) => {
                eprintln!("demo: ls: cannot access {dir:?}: {e}");
                std::process::exit(2);
            }
        },
    }
}

/// The names in `dir`, sorted.
fn list_dir(dir: &str) -> io::Result<Vec<String>> {
    let mut names = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<io::Result<Vec<_>>>()?;
    names.sort();
    Ok(names)
}

/// Reads the command line (`args` without the program name) and `$PORT`.
fn parse_args(args: &[String], port_env: Option<&str>) -> Result<Command, String> {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        [] => Ok(Command::Serve {
            port: default_port(port_env)?,
        }),
        ["help" | "-h" | "--help"] => Ok(Command::Help),
        ["serve"] => Ok(Command::Serve {
            port: default_port(port_env)?,
        }),
        ["serve", "--port", port] => Ok(Command::Serve {
            port: parse_port(port)?,
        }),
        ["serve", ..] => Err(format!(
            "serve takes only --port PORT, got {:?}",
            &args[1..]
        )),
        ["exit", code] => Ok(Command::Exit {
            code: parse_code(code)?,
            after: None,
        }),
        ["exit", code, "--after", secs] => Ok(Command::Exit {
            code: parse_code(code)?,
            after: Some(parse_seconds(secs)?),
        }),
        ["exit", ..] => Err("exit takes CODE [--after SECS]".into()),
        ["sleep", secs] => Ok(Command::Sleep(parse_seconds(secs)?)),
        ["sleep", ..] => Err("sleep takes SECS".into()),
        ["count", n] => Ok(Command::Count {
            lines: parse_count(n)?,
            every: Duration::ZERO,
        }),
        ["count", n, "--every", secs] => Ok(Command::Count {
            lines: parse_count(n)?,
            every: parse_seconds(secs)?,
        }),
        ["count", ..] => Err("count takes N [--every SECS]".into()),
        ["echo", "--stderr", words @ ..] => Ok(Command::Echo {
            stderr: true,
            words: words.iter().map(|w| w.to_string()).collect(),
        }),
        ["echo", words @ ..] => Ok(Command::Echo {
            stderr: false,
            words: words.iter().map(|w| w.to_string()).collect(),
        }),
        ["cat"] => Ok(Command::Cat),
        ["cat", ..] => Err("cat takes no arguments (it copies standard input)".into()),
        ["ls"] => Ok(Command::Ls("/".into())),
        ["ls", dir] => Ok(Command::Ls(dir.to_string())),
        ["ls", ..] => Err("ls takes at most one DIR".into()),
        [other, ..] => Err(format!("unknown subcommand {other:?}")),
    }
}

fn default_port(port_env: Option<&str>) -> Result<u16, String> {
    match port_env {
        None | Some("") => Ok(8080),
        Some(port) => parse_port(port).map_err(|e| format!("$PORT: {e}")),
    }
}

fn parse_port(s: &str) -> Result<u16, String> {
    match s.parse::<u16>() {
        Ok(port) if port > 0 => Ok(port),
        _ => Err(format!("port must be 1-65535, got {s:?}")),
    }
}

fn parse_code(s: &str) -> Result<i32, String> {
    match s.parse::<u8>() {
        Ok(code) => Ok(i32::from(code)),
        Err(_) => Err(format!("exit code must be 0-255, got {s:?}")),
    }
}

fn parse_count(s: &str) -> Result<u64, String> {
    s.parse::<u64>()
        .map_err(|_| format!("the number of lines must be a whole number, got {s:?}"))
}

fn parse_seconds(s: &str) -> Result<Duration, String> {
    s.parse::<f64>()
        .ok()
        .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
        .ok_or_else(|| format!("seconds must be a non-negative number, got {s:?}"))
}

/// The kernel's hostname: the pod name inside a pod.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

fn serve(port: u16) -> io::Result<()> {
    let listener = TcpListener::bind(("0.0.0.0", port))
        .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on 0.0.0.0:{port}: {e}")))?;
    let name: Arc<str> = Arc::from(hostname());
    println!("demo: serving HTTP on 0.0.0.0:{port} as {name}");
    let active = Arc::new(AtomicUsize::new(0));
    for stream in listener.incoming() {
        let mut stream = match stream {
            Ok(stream) => stream,
            Err(e) => {
                // Out of file descriptors or a connection reset before accept: keep serving,
                // but do not spin.
                eprintln!("demo: accept: {e}");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        if active.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
            active.fetch_sub(1, Ordering::AcqRel);
            let _ = stream.write_all(&response(503, "too many connections\n", false, false));
            continue;
        }
        let (name, active) = (name.clone(), active.clone());
        let spawned = std::thread::Builder::new().spawn(move || {
            let _ = handle(stream, &name);
            active.fetch_sub(1, Ordering::AcqRel);
        });
        if let Err(e) = spawned {
            eprintln!("demo: cannot start a thread: {e}");
        }
    }
    Ok(())
}

/// Serves one connection until the client closes it, asks to, or breaks the protocol.
fn handle(stream: TcpStream, name: &str) -> io::Result<()> {
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let _ = stream.set_nodelay(true);
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    loop {
        let lines = match read_head(&mut reader) {
            Ok(Some(lines)) => lines,
            Ok(None) => return Ok(()),
            Err(HeadError::TooLarge) => {
                writer.write_all(&response(431, "request head too large\n", false, false))?;
                return Ok(());
            }
            Err(HeadError::Io(e)) => return Err(e),
        };
        let request = match parse_head(&lines) {
            Ok(request) => request,
            Err((status, message)) => {
                writer.write_all(&response(status, &message, false, false))?;
                return Ok(());
            }
        };
        if request.content_length > MAX_BODY {
            writer.write_all(&response(413, "request body too large\n", false, false))?;
            return Ok(());
        }
        let discarded = io::copy(
            &mut reader.by_ref().take(request.content_length),
            &mut io::sink(),
        )?;
        if discarded < request.content_length {
            return Ok(());
        }
        let (status, body) = route(&request, name);
        let head_only = request.method == "HEAD";
        writer.write_all(&response(status, &body, request.keep_alive, head_only))?;
        if !request.keep_alive {
            return Ok(());
        }
    }
}

/// Why a request head could not be read.
#[derive(Debug)]
enum HeadError {
    /// Longer than [`MAX_HEAD`].
    TooLarge,
    /// The socket failed, timed out, or closed in the middle of a head.
    Io(io::Error),
}

impl From<io::Error> for HeadError {
    fn from(e: io::Error) -> Self {
        HeadError::Io(e)
    }
}

/// Reads the lines of one request head, without their line ends; `None` when the client
/// closed the connection between requests.
fn read_head(reader: &mut impl BufRead) -> Result<Option<Vec<String>>, HeadError> {
    let mut lines = Vec::new();
    let mut total = 0usize;
    loop {
        let mut line = Vec::new();
        let limit = (MAX_HEAD - total) as u64 + 1;
        let n = reader.by_ref().take(limit).read_until(b'\n', &mut line)?;
        if n == 0 {
            return if total == 0 {
                Ok(None)
            } else {
                Err(io::Error::from(io::ErrorKind::UnexpectedEof).into())
            };
        }
        total += n;
        if total > MAX_HEAD {
            return Err(HeadError::TooLarge);
        }
        if line.last() != Some(&b'\n') {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
        }
        while matches!(line.last(), Some(b'\n' | b'\r')) {
            line.pop();
        }
        if line.is_empty() {
            // RFC 9112 asks servers to ignore empty lines before a request line.
            if lines.is_empty() {
                continue;
            }
            return Ok(Some(lines));
        }
        lines.push(String::from_utf8_lossy(&line).into_owned());
    }
}

/// The parts of a request the demo looks at.
#[derive(Debug, PartialEq)]
struct Request {
    method: String,
    path: String,
    keep_alive: bool,
    content_length: u64,
}

/// Reads a request line and headers; a bad one gives the status and message to answer with.
fn parse_head(lines: &[String]) -> Result<Request, (u16, String)> {
    let bad = |message: &str| (400, format!("{message}\n"));
    let first = lines.first().ok_or_else(|| bad("empty request"))?;
    let mut parts = first.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("malformed request line"));
    };
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(bad("malformed method"));
    }
    let mut keep_alive = match version {
        "HTTP/1.1" => true,
        "HTTP/1.0" => false,
        v if v.starts_with("HTTP/") => return Err((505, "HTTP version not supported\n".into())),
        _ => return Err(bad("malformed request line")),
    };
    let mut content_length = 0u64;
    for line in &lines[1..] {
        let Some((name, value)) = line.split_once(':') else {
            return Err(bad("malformed header line"));
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case("keep-alive") {
                    keep_alive = true;
                }
            }
        } else if name.eq_ignore_ascii_case("content-length") {
            content_length = value.parse().map_err(|_| bad("malformed Content-Length"))?;
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err((411, "chunked request bodies are not supported\n".into()));
        }
    }
    let path = target
        .split(['?', '#'])
        .next()
        .unwrap_or_default()
        .to_string();
    Ok(Request {
        method: method.to_string(),
        path,
        keep_alive,
        content_length,
    })
}

/// What to answer: status and body.
fn route(request: &Request, name: &str) -> (u16, String) {
    if request.method != "GET" && request.method != "HEAD" {
        return (405, "only GET and HEAD are served\n".into());
    }
    match request.path.as_str() {
        "/" => (200, format!("{name}\n")),
        "/healthz" => (200, "ok\n".into()),
        _ => (404, "not found\n".into()),
    }
}

fn response(status: u16, body: &str, keep_alive: bool, head_only: bool) -> Vec<u8> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        411 => "Length Required",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n",
        body.len()
    );
    if status == 405 {
        out.push_str("Allow: GET, HEAD\r\n");
    }
    if !keep_alive {
        out.push_str("Connection: close\r\n");
    }
    out.push_str("\r\n");
    if !head_only {
        out.push_str(body);
    }
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn command_lines() {
        let secs = Duration::from_secs;
        for (line, port_env, want) in [
            ("", None, Ok(Command::Serve { port: 8080 })),
            ("", Some("9000"), Ok(Command::Serve { port: 9000 })),
            ("", Some(""), Ok(Command::Serve { port: 8080 })),
            ("serve", None, Ok(Command::Serve { port: 8080 })),
            (
                "serve --port 81",
                Some("9000"),
                Ok(Command::Serve { port: 81 }),
            ),
            (
                "exit 3",
                None,
                Ok(Command::Exit {
                    code: 3,
                    after: None,
                }),
            ),
            (
                "exit 0 --after 2",
                None,
                Ok(Command::Exit {
                    code: 0,
                    after: Some(secs(2)),
                }),
            ),
            (
                "exit 1 --after 0.5",
                None,
                Ok(Command::Exit {
                    code: 1,
                    after: Some(Duration::from_millis(500)),
                }),
            ),
            ("sleep 10", None, Ok(Command::Sleep(secs(10)))),
            (
                "count 3",
                None,
                Ok(Command::Count {
                    lines: 3,
                    every: Duration::ZERO,
                }),
            ),
            (
                "count 5 --every 0.5",
                None,
                Ok(Command::Count {
                    lines: 5,
                    every: Duration::from_millis(500),
                }),
            ),
            (
                "echo hello  world",
                None,
                Ok(Command::Echo {
                    stderr: false,
                    words: vec!["hello".into(), "world".into()],
                }),
            ),
            (
                "echo",
                None,
                Ok(Command::Echo {
                    stderr: false,
                    words: vec![],
                }),
            ),
            (
                "echo --stderr oops",
                None,
                Ok(Command::Echo {
                    stderr: true,
                    words: vec!["oops".into()],
                }),
            ),
            ("cat", None, Ok(Command::Cat)),
            ("ls", None, Ok(Command::Ls("/".into()))),
            ("ls /etc", None, Ok(Command::Ls("/etc".into()))),
            ("help", None, Ok(Command::Help)),
            ("--help", None, Ok(Command::Help)),
        ] {
            assert_eq!(
                parse_args(&args(line), port_env),
                want,
                "{line:?} PORT={port_env:?}"
            );
        }
        for (line, port_env) in [
            ("", Some("x")),
            ("", Some("0")),
            ("serve --port 70000", None),
            ("serve 80", None),
            ("exit", None),
            ("exit 256", None),
            ("exit -1", None),
            ("exit 1 --after -2", None),
            ("exit 1 --after", None),
            ("sleep", None),
            ("sleep NaN", None),
            ("sleep inf", None),
            ("sleep 1 2", None),
            ("count", None),
            ("count -1", None),
            ("count 3 --every", None),
            ("count 3 --every x", None),
            ("cat file", None),
            ("ls / /etc", None),
            ("fly", None),
        ] {
            assert!(
                parse_args(&args(line), port_env).is_err(),
                "{line:?} PORT={port_env:?}"
            );
        }
    }

    #[test]
    fn ls_lists_sorted_names() {
        let dir = std::env::temp_dir().join(format!("demo-ls-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("b")).unwrap();
        std::fs::write(dir.join("a"), "").unwrap();
        let names = list_dir(dir.to_str().unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(names.unwrap(), ["a", "b"]);
        assert!(list_dir("/nonexistent-demo-dir").is_err());
    }

    fn lines(s: &[&str]) -> Vec<String> {
        s.iter().map(|l| l.to_string()).collect()
    }

    #[test]
    fn request_heads() {
        let ok = |method: &str, path: &str, keep_alive, content_length| {
            Ok(Request {
                method: method.into(),
                path: path.into(),
                keep_alive,
                content_length,
            })
        };
        for (head, want) in [
            (vec!["GET / HTTP/1.1", "Host: x"], ok("GET", "/", true, 0)),
            (vec!["GET /?a=b HTTP/1.1"], ok("GET", "/", true, 0)),
            (vec!["GET / HTTP/1.0"], ok("GET", "/", false, 0)),
            (
                vec!["GET / HTTP/1.0", "Connection: Keep-Alive"],
                ok("GET", "/", true, 0),
            ),
            (
                vec!["GET / HTTP/1.1", "connection: close"],
                ok("GET", "/", false, 0),
            ),
            (
                vec!["POST /x HTTP/1.1", "Content-Length: 12"],
                ok("POST", "/x", true, 12),
            ),
        ] {
            assert_eq!(parse_head(&lines(&head)), want, "{head:?}");
        }
        for (head, status) in [
            (vec!["GET /"], 400),
            (vec!["GET  / HTTP/1.1"], 400),
            (vec!["get / HTTP/1.1"], 400),
            (vec!["GET / HTTP/2.0"], 505),
            (vec!["GET / FTP/1.0"], 400),
            (vec!["GET / HTTP/1.1", "no colon"], 400),
            (vec!["GET / HTTP/1.1", "Content-Length: -1"], 400),
            (vec!["POST / HTTP/1.1", "Transfer-Encoding: chunked"], 411),
        ] {
            assert_eq!(
                parse_head(&lines(&head)).map_err(|e| e.0),
                Err(status),
                "{head:?}"
            );
        }
    }

    #[test]
    fn heads_are_read_whole_and_bounded() {
        let mut two =
            io::Cursor::new(b"\r\nGET / HTTP/1.1\r\nA: b\r\n\r\nGET /x HTTP/1.1\r\n\r\n".to_vec());
        assert_eq!(
            read_head(&mut two).unwrap(),
            Some(lines(&["GET / HTTP/1.1", "A: b"]))
        );
        assert_eq!(
            read_head(&mut two).unwrap(),
            Some(lines(&["GET /x HTTP/1.1"]))
        );
        assert_eq!(read_head(&mut two).unwrap(), None);

        let mut cut = io::Cursor::new(b"GET / HTTP/1.1\r\nA: b".to_vec());
        assert!(matches!(read_head(&mut cut), Err(HeadError::Io(_))));

        let mut huge = io::Cursor::new(
            format!("GET / HTTP/1.1\r\nA: {}\r\n\r\n", "x".repeat(MAX_HEAD)).into_bytes(),
        );
        assert!(matches!(read_head(&mut huge), Err(HeadError::TooLarge)));
    }

    #[test]
    fn routes() {
        let req = |method: &str, path: &str| Request {
            method: method.into(),
            path: path.into(),
            keep_alive: true,
            content_length: 0,
        };
        assert_eq!(route(&req("GET", "/"), "web-1"), (200, "web-1\n".into()));
        assert_eq!(route(&req("HEAD", "/"), "web-1").0, 200);
        assert_eq!(
            route(&req("GET", "/healthz"), "web-1"),
            (200, "ok\n".into())
        );
        assert_eq!(route(&req("GET", "/nope"), "web-1").0, 404);
        assert_eq!(route(&req("DELETE", "/"), "web-1").0, 405);
    }

    #[test]
    fn responses_frame_their_bodies() {
        let text = String::from_utf8(response(200, "web-1\n", true, false)).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(text.contains("Content-Length: 6\r\n"), "{text}");
        assert!(!text.contains("Connection: close"), "{text}");
        assert!(text.ends_with("\r\n\r\nweb-1\n"), "{text}");
        let head = String::from_utf8(response(200, "web-1\n", false, true)).unwrap();
        assert!(head.contains("Connection: close\r\n"), "{head}");
        assert!(head.ends_with("\r\n\r\n"), "{head}");
    }
}
