//! Threads with a single-threaded Tokio runtime each, for the two kinds of work a member does
//! most: Raft (its core, replication streams, state-machine worker, proposer, and the peer
//! service that feeds them) and serving clients' gRPC connections.
//!
//! Raft gets its own thread rather than running among the gRPC tasks: under load hundreds of
//! request tasks queue on the server runtime, and a Raft core queued behind them would leave
//! the disk idle between fsyncs. Peer traffic (AppendEntries, a follower's batch of writes) is
//! served there too, so it reaches openraft and the proposer without a hop between threads.
//!
//! Client connections are served on single-threaded runtimes ([`Lanes`]), each connection on
//! one of them ([`serve`]). A work-stealing runtime wakes its other workers for every woken
//! task and runs a connection's writer right after each response that wakes it, one `writev`
//! per response; on one thread the responses of a batch of writes, handed over together
//! through the lane's [`Inbox`], complete first and the connection writes them at once.

use std::future::Future;

use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A thread running a single-threaded runtime; stops it when dropped.
pub struct RuntimeThread {
    handle: Handle,
    stop: CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RuntimeThread {
    pub fn start(name: &str) -> std::io::Result<RuntimeThread> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name(format!("{name}-blocking"))
            .build()?;
        let handle = rt.handle().clone();
        let stop = CancellationToken::new();
        let until = stop.clone();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                rt.block_on(until.cancelled());
                // Tasks still running (replication streams of a stopped Raft) are dropped here.
                rt.shutdown_background();
            })?;
        Ok(RuntimeThread {
            handle,
            stop,
            thread: Some(thread),
        })
    }

    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Runs `f` on this thread and waits for its result.
    pub async fn run<F>(&self, f: F) -> std::io::Result<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle
            .spawn(f)
            .await
            .map_err(|e| std::io::Error::other(format!("{e}")))
    }
}

impl Drop for RuntimeThread {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The threads that serve connections: half the cores (at least one), leaving the rest to
/// Raft, the log writer and the state machine.
pub struct Lanes {
    threads: Vec<RuntimeThread>,
}

/// Something to run on a lane: handing an answer to a request task there.
pub type Delivery = Box<dyn FnOnce() + Send>;

/// A lane's inbox for answers. Answers sent one by one from another thread wake the lane for
/// each, and it writes each to its connection alone; handed over together, they wake it once,
/// their request tasks run back to back, and each connection writes them with one `writev`.
#[derive(Clone)]
pub struct Inbox {
    lane: usize,
    tx: mpsc::UnboundedSender<Vec<Delivery>>,
}

thread_local! {
    static INBOX: std::cell::RefCell<Option<Inbox>> = const { std::cell::RefCell::new(None) };
}

impl Inbox {
    /// The inbox of the lane this runs on, if it runs on one.
    pub fn current() -> Option<Inbox> {
        INBOX.with(|i| i.borrow().clone())
    }
}

/// Answers gathered by the lane waiting for them, then handed over one message per lane.
#[derive(Default)]
pub struct Deliveries {
    lanes: Vec<(Inbox, Vec<Delivery>)>,
}

impl Deliveries {
    /// Runs `f` on `inbox`'s lane when sent, or here and now without one.
    pub fn add(&mut self, inbox: Option<&Inbox>, f: impl FnOnce() + Send + 'static) {
        let Some(inbox) = inbox else {
            f();
            return;
        };
        match self.lanes.iter_mut().find(|(i, _)| i.lane == inbox.lane) {
            Some((_, batch)) => batch.push(Box::new(f)),
            None => self.lanes.push((inbox.clone(), vec![Box::new(f)])),
        }
    }

    pub fn send(self) {
        for (inbox, batch) in self.lanes {
            if let Err(undelivered) = inbox.tx.send(batch) {
                // The lane stopped: run them here (the receivers are gone or going).
                for f in undelivered.0 {
                    f();
                }
            }
        }
    }
}

impl Lanes {
    pub fn start(name: &str) -> std::io::Result<Lanes> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let threads: Vec<RuntimeThread> = (0..(cores / 2).max(1))
            .map(|i| RuntimeThread::start(&format!("{name}-{i}")))
            .collect::<std::io::Result<_>>()?;
        for (lane, t) in threads.iter().enumerate() {
            let (tx, mut rx) = mpsc::unbounded_channel::<Vec<Delivery>>();
            let inbox = Inbox { lane, tx };
            t.handle().spawn(async move {
                INBOX.with(|i| *i.borrow_mut() = Some(inbox));
                while let Some(batch) = rx.recv().await {
                    for f in batch {
                        f();
                    }
                }
            });
        }
        Ok(Lanes { threads })
    }

    /// The first lane, for tasks that belong with the servers.
    pub fn first(&self) -> &Handle {
        self.threads[0].handle()
    }

    /// Every lane's runtime.
    pub fn handles(&self) -> Vec<Handle> {
        self.threads.iter().map(|t| t.handle().clone()).collect()
    }
}

/// Accepted connections handed to one thread, as the stream its server takes.
pub type Incoming<IO> =
    std::pin::Pin<Box<dyn futures::Stream<Item = std::io::Result<IO>> + Send + 'static>>;

/// Accepts connections on `listener` until `shutdown`, giving each to the next of `threads`
/// in turn, where `serve` runs a server over the connections that thread receives (each
/// wrapped by `wrap`). Returns when every thread's server has stopped.
pub async fn serve<IO, S, F>(
    threads: &[Handle],
    listener: TcpListener,
    wrap: fn(TcpStream) -> IO,
    serve: S,
    shutdown: CancellationToken,
) -> anyhow::Result<()>
where
    IO: Send + 'static,
    S: Fn(Incoming<IO>) -> F,
    F: Future<Output = Result<(), tonic::transport::Error>> + Send + 'static,
{
    let mut lanes = Vec::new();
    let mut servers = Vec::new();
    for t in threads {
        let (tx, rx) = mpsc::unbounded_channel::<std::net::TcpStream>();
        let incoming = futures::StreamExt::map(
            tokio_stream::wrappers::UnboundedReceiverStream::new(rx),
            move |s| {
                // Registered with the thread's own reactor: its I/O wakes only that thread.
                TcpStream::from_std(s).map(wrap)
            },
        );
        servers.push(t.spawn(serve(Box::pin(incoming))));
        lanes.push(tx);
    }
    let mut next = 0usize;
    let accepted = async {
        loop {
            let stream = match listener.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    // Out of file descriptors, say: keep serving who is connected.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            // Requests and Raft messages are small: Nagle's delay would hold them back.
            let _ = stream.set_nodelay(true);
            let Ok(stream) = stream.into_std() else {
                continue;
            };
            let _ = lanes[next % lanes.len()].send(stream);
            next = next.wrapping_add(1);
        }
    };
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = accepted => {}
    }
    drop(lanes);
    for s in servers {
        s.await??;
    }
    Ok(())
}
