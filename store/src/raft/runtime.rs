//! The thread Raft runs on. openraft's core, its replication streams, the state-machine worker
//! and the proposer live on their own single-threaded runtime rather than among the gRPC
//! tasks: under load hundreds of request tasks queue on the server runtime, and a Raft core
//! queued behind them would leave the disk idle between fsyncs. The OS scheduler wakes a
//! thread that mostly sleeps promptly, so the next log append starts as soon as it can.

use std::future::Future;

use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

/// Owns the Raft thread; stops it when dropped.
pub struct RaftThread {
    handle: Handle,
    stop: CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RaftThread {
    pub fn start() -> std::io::Result<RaftThread> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name("raft-blocking")
            .build()?;
        let handle = rt.handle().clone();
        let stop = CancellationToken::new();
        let until = stop.clone();
        let thread = std::thread::Builder::new()
            .name("raft".into())
            .spawn(move || {
                rt.block_on(until.cancelled());
                // Tasks still running (replication streams of a stopped Raft) are dropped here.
                rt.shutdown_background();
            })?;
        Ok(RaftThread {
            handle,
            stop,
            thread: Some(thread),
        })
    }

    /// Runs `f` on the Raft thread and waits for its result.
    pub async fn run<F>(&self, f: F) -> std::io::Result<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle
            .spawn(f)
            .await
            .map_err(|e| std::io::Error::other(format!("raft thread: {e}")))
    }
}

impl Drop for RaftThread {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
