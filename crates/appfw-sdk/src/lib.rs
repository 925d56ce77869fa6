//! Write [appfw](https://example.invalid/appfw) plugins in Rust.
//!
//! A plugin is a program the appfw host starts and supervises. It inherits a connected Unix
//! socket (named by `APPFW_PLUGIN_FD`), and through this crate it:
//!
//! * performs the handshake and negotiates the protocol version and capabilities;
//! * answers the host's heartbeats from its event loop (so a stuck plugin is detected);
//! * publishes and subscribes to topics, sends requests and serves them;
//! * reports its health and sends structured log records;
//! * shuts down gracefully when the host asks or on SIGTERM.
//!
//! Handlers run as tasks. A handler that panics is caught: a request gets a `critical`
//! `handler_panicked` error reply and the plugin keeps running.
//!
//! # A complete minimal plugin
//!
//! ```no_run
//! use appfw_sdk::{Plugin, RequestError};
//! use appfw_sdk::pb::HealthStatus;
//! use std::time::Duration;
//!
//! #[tokio::main(flavor = "current_thread")]
//! async fn main() -> Result<(), appfw_sdk::SdkError> {
//!     // Connects over the socket the host passed in and performs the handshake.
//!     let plugin = Plugin::connect().await?;
//!
//!     // Answer requests on "greet": the reply is the handler's Ok value.
//!     plugin
//!         .serve("greet", |req| async move {
//!             if req.payload.is_empty() {
//!                 return Err(RequestError::permanent("bad_request", "empty name"));
//!             }
//!             let mut out = b"hello, ".to_vec();
//!             out.extend_from_slice(&req.payload);
//!             Ok(out.into())
//!         })
//!         .await?;
//!
//!     // React to messages on any "orders.*" topic.
//!     plugin
//!         .subscribe("orders.*", |msg| async move {
//!             println!("{} sent {} bytes on {}", msg.sender, msg.payload.len(), msg.topic);
//!         })
//!         .await?;
//!
//!     plugin.report_health(HealthStatus::Healthy, "ready").await?;
//!     plugin.publish("greeter.started", "hi").await?;
//!
//!     // Ask another plugin something, with a deadline.
//!     match plugin.request("echo", "ping", Duration::from_secs(1)).await {
//!         Ok(reply) => println!("echo answered {reply:?}"),
//!         Err(e) if e.is_temporary() => println!("echo not available yet: {e}"),
//!         Err(e) => println!("echo failed: {e}"),
//!     }
//!
//!     // Run until the host asks us to stop (or SIGTERM), then drain and say goodbye.
//!     plugin.run_until_shutdown().await
//! }
//! ```
//!
//! The one-line form does the same connect/run dance around your set-up code:
//!
//! ```no_run
//! # async fn f() -> Result<(), appfw_sdk::SdkError> {
//! appfw_sdk::run(|plugin| async move {
//!     plugin.serve("echo", |req| async move { Ok(req.payload) }).await?;
//!     Ok(())
//! })
//! .await
//! # }
//! ```

mod connection;
mod error;
pub mod metrics;
pub mod patterns;
mod plugin;
pub mod resilience;
pub mod trace;

use std::future::Future;

pub use appfw_proto::pb;
pub use bytes::Bytes;
pub use error::{RequestError, SdkError};
pub use metrics::{Counter, Gauge, Histogram, Metrics};
pub use plugin::{
    Message, Overflow, Plugin, PluginBuilder, RequestOptions, SubscribeOptions, SubscriptionId,
};
pub use trace::TraceContext;

/// Connects with the defaults, runs `setup` (register handlers, start timers), then serves until
/// the host asks the plugin to stop, and shuts down gracefully.
pub async fn run<F, Fut>(setup: F) -> Result<(), SdkError>
where
    F: FnOnce(Plugin) -> Fut,
    Fut: Future<Output = Result<(), SdkError>>,
{
    let plugin = Plugin::connect().await?;
    setup(plugin.clone()).await?;
    plugin.run_until_shutdown().await
}
