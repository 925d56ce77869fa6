//! The appfw host as a library.
//!
//! [`Host::start`] brings up, in order: the data directory (lock and token), the spawner thread
//! and the reaper, the bus, one owner task per plugin, and the HTTP API; [`Host::shutdown`]
//! takes them down in reverse within a deadline. The `appfw` binary is a thin shell over this.
//!
//! Subsystems, one module each: [`config`], [`datadir`], [`events`], [`supervisor`], [`bus`],
//! [`api`].

pub mod api;
pub mod bus;
pub mod config;
pub mod datadir;
pub mod events;
mod host;
pub mod reload;
pub mod supervisor;

pub use host::{Host, HostError, HostOptions, run, signal};

/// Lowest wire protocol version the host speaks.
pub const PROTOCOL_MIN: u32 = appfw_proto::MIN_VERSION;
/// Highest wire protocol version the host speaks.
pub const PROTOCOL_MAX: u32 = appfw_proto::MAX_VERSION;
