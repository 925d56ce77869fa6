//! The bus's I/O thread: a single-threaded tokio runtime on its own OS thread, where every plugin
//! connection's reader and writer tasks run.
//!
//! A relayed message goes from the publisher's reader to the subscriber's writer. On the host's
//! multi-threaded runtime those two tasks sit on different worker threads, so each hand-over is a
//! cross-thread wake-up (a futex, a context switch, the frame's cache lines moving), which cost
//! about a third of a request/reply round trip on a two-core machine. Here the writer a reader
//! woke runs next on the same thread, with the frame still in cache, and nothing else the host
//! does (API, log capture, owner tasks) competes with the data path on that thread.

use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// The running I/O thread. [`IoThread::stop`] ends it once the connections are closed.
#[derive(Debug)]
pub struct IoThread {
    handle: Handle,
    stop: oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl IoThread {
    /// Starts the thread and its runtime.
    pub fn start() -> std::io::Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = rt.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("appfw-bus".into())
            .spawn(move || {
                // Runs the connection tasks until told to stop; dropping the runtime then drops
                // whatever is left (nothing, once every connection was closed and joined).
                rt.block_on(async {
                    let _ = stopped.await;
                });
            })?;
        Ok(Self {
            handle,
            stop,
            thread,
        })
    }

    /// Where connection tasks are spawned (and their sockets registered).
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Tells the thread to stop; join the returned handle to wait for it.
    pub fn stop(self) -> std::thread::JoinHandle<()> {
        let _ = self.stop.send(());
        self.thread
    }
}
