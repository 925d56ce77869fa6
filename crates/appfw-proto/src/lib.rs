//! The appfw wire protocol, version 1.
//!
//! A plugin and the host talk over one connected Unix stream socket that the plugin inherits at
//! start ([`ENV_PLUGIN_FD`] names its descriptor). Every frame is a big-endian `u32` length, a
//! big-endian `u16` header length, a protobuf [`pb::Header`], then an opaque payload. The payload
//! of bus messages (`PUBLISH`, `REQUEST`, `REPLY`) is relayed by the host as the same bytes; only
//! the small header is decoded and re-encoded on the way. See `docs/PROTOCOL.md` for the full
//! specification.
//!
//! This crate depends only on `bytes`, `prost` and tokio's I/O traits, so both the SDK and the host
//! (and fuzzers) can use it.

pub mod batch;
mod frame;
mod header;
pub mod run;
pub mod trace;
pub mod writer;

pub use frame::{Frame, FrameCodec, FrameError, decode_body, encode_frame, encode_frame_of};
pub use header::{Header, Str, WireHeader};

/// Generated protobuf types of `proto/appfw/v1/appfw.proto`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/appfw.v1.rs"));
    pub use crate::header::Header;
}

/// Lowest protocol version this crate speaks.
pub const MIN_VERSION: u32 = 1;
/// Highest protocol version this crate speaks.
pub const MAX_VERSION: u32 = 1;

/// Environment variable holding the number of the inherited socket's file descriptor.
pub const ENV_PLUGIN_FD: &str = "APPFW_PLUGIN_FD";
/// Environment variable holding the plugin's (instance) name.
pub const ENV_PLUGIN_NAME: &str = "APPFW_PLUGIN_NAME";
/// Environment variable holding the index of a plugin's copy (`0` for an unreplicated one).
pub const ENV_INSTANCE: &str = "APPFW_INSTANCE";
/// Environment variable holding how many copies of the plugin run (`instances`).
pub const ENV_INSTANCES: &str = "APPFW_INSTANCES";
/// Environment variable holding the inclusive range of protocol versions the host speaks, `1-1`.
pub const ENV_PLUGIN_PROTOCOL: &str = "APPFW_PLUGIN_PROTOCOL";

/// Default largest frame (value of the length prefix) either side may send: 4 MiB.
pub const DEFAULT_MAX_FRAME_SIZE: usize = 4 * 1024 * 1024;
/// Bytes of the length prefix.
pub const LENGTH_PREFIX_LEN: usize = 4;
/// Bytes of the header-length field.
pub const HEADER_LEN_LEN: usize = 2;

/// Names of the optional capabilities negotiated in the handshake.
///
/// A peer only sends a frame type tied to a capability when the handshake's intersection
/// contains it. Unknown capability names are ignored, so new ones can be added freely.
pub mod caps {
    /// PUBLISH / SUBSCRIBE / UNSUBSCRIBE.
    pub const PUBSUB: &str = "pubsub";
    /// REQUEST / REPLY.
    pub const REQUEST: &str = "request";
    /// LOG frames.
    pub const LOG: &str = "log";
    /// METRICS frames.
    pub const METRICS: &str = "metrics";
    /// HEALTH frames.
    pub const HEALTH: &str = "health";
    /// CONFIG_UPDATE frames delivered live.
    pub const CONFIG: &str = "config";
    /// Delivery receipts: a PUBLISH with a non-zero `request_id` is answered by a REPLY once
    /// every matching subscriber took it (or with an error naming the ones that did not).
    pub const PUBLISH_ACK: &str = "publish_ack";
    /// BATCH frames (host → plugin): messages on one topic to one subscription delivered
    /// several to a frame, as their publisher sent them.
    pub const BATCH: &str = "batch";
    /// Every capability this version of the crate knows.
    pub const ALL: &[&str] = &[
        PUBSUB,
        REQUEST,
        LOG,
        METRICS,
        HEALTH,
        CONFIG,
        PUBLISH_ACK,
        BATCH,
    ];
}

/// Current time in milliseconds since the Unix epoch, the unit of `Header.deadline_unix_ms`.
pub fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Picks the version to speak: the highest one in both inclusive ranges, if they overlap.
pub fn negotiate_version(
    plugin_min: u32,
    plugin_max: u32,
    host_min: u32,
    host_max: u32,
) -> Option<u32> {
    let hi = plugin_max.min(host_max);
    let lo = plugin_min.max(host_min);
    (plugin_min <= plugin_max && lo <= hi).then_some(hi)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_picks_highest_common_version() {
        assert_eq!(negotiate_version(1, 3, 1, 2), Some(2));
        assert_eq!(negotiate_version(1, 1, 1, 1), Some(1));
        assert_eq!(negotiate_version(2, 3, 1, 1), None);
        assert_eq!(
            negotiate_version(3, 2, 1, 5),
            None,
            "an empty plugin range never matches"
        );
    }
}
