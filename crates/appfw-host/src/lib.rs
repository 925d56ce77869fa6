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
/// The configuration (its own crate, so that tools and fuzzers can use it alone).
pub use appfw_config as config;
pub mod datadir;
pub mod events;
mod host;
pub mod hostlog;
pub mod logs;
pub mod metrics;
pub mod reload;
pub mod resources;
pub mod store;
pub mod supervisor;

pub use host::{Host, HostError, HostOptions, run, signal};

/// Lowest wire protocol version the host speaks.
pub const PROTOCOL_MIN: u32 = appfw_proto::MIN_VERSION;
/// Highest wire protocol version the host speaks.
pub const PROTOCOL_MAX: u32 = appfw_proto::MAX_VERSION;

#[cfg(test)]
mod tests {
    #[test]
    fn config_and_protocol_agree_on_the_default_frame_size() {
        assert_eq!(
            crate::config::DEFAULT_MAX_FRAME_SIZE,
            appfw_proto::DEFAULT_MAX_FRAME_SIZE as u64
        );
    }
}
