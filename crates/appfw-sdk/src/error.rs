//! Errors of the SDK.

use appfw_proto::pb::{self, ErrorKind};

/// Why connecting or talking to the host failed.
#[derive(Debug, thiserror::Error)]
pub enum SdkError {
    /// `APPFW_PLUGIN_FD` is missing: the program was not started by an appfw host.
    #[error(
        "environment variable {0} is not set: this program must be started by an appfw host as a plugin"
    )]
    NotAPlugin(&'static str),
    /// `APPFW_PLUGIN_FD` does not name a usable Unix stream socket.
    #[error("{var}={value} does not name an inherited Unix stream socket: {reason}")]
    BadFd {
        /// The variable name.
        var: &'static str,
        /// Its value.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The host refused the handshake.
    #[error("host refused the handshake: {0}")]
    Refused(String),
    /// The handshake did not complete in time or got an unexpected answer.
    #[error("handshake failed: {0}")]
    Handshake(String),
    /// Reading or writing frames failed.
    #[error("protocol error: {0}")]
    Frame(#[from] appfw_proto::FrameError),
    /// The connection to the host is closed (the host stopped or closed it).
    #[error("connection to the host is closed")]
    Closed,
    /// The host refused a subscription.
    #[error("subscription to {topic:?} refused: {error}")]
    Subscribe {
        /// The pattern.
        topic: String,
        /// The host's answer.
        error: RequestError,
    },
    /// A value could not be encoded for a typed topic.
    #[error("cannot encode a message for {topic:?}: {error}")]
    Encode {
        /// The topic.
        topic: String,
        /// Why.
        error: RequestError,
    },
    /// I/O failure on the socket.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

/// A failed request, as carried in `Header.error`: kind (temporary/permanent/critical), code and
/// message. Handlers return it to report a failure; `Plugin::request` returns it on failure.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{kind:?} error {code}: {message}")]
pub struct RequestError {
    /// Whether retrying may help.
    pub kind: ErrorKind,
    /// Stable snake_case code.
    pub code: String,
    /// Human-readable detail.
    pub message: String,
}

impl RequestError {
    /// A new error.
    pub fn new(kind: ErrorKind, code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            kind,
            code: code.into(),
            message: message.into(),
        }
    }
    /// A temporary error: retrying later may succeed.
    pub fn temporary(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Temporary, code, message)
    }
    /// A permanent error: retrying will fail again.
    pub fn permanent(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Permanent, code, message)
    }
    /// A critical error: the responder is in a bad state.
    pub fn critical(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Critical, code, message)
    }
    /// Whether a retry may succeed.
    pub fn is_temporary(&self) -> bool {
        self.kind == ErrorKind::Temporary
    }
    pub(crate) fn to_pb(&self) -> pb::Error {
        pb::Error {
            kind: self.kind as i32,
            code: self.code.clone(),
            message: self.message.clone(),
        }
    }
    pub(crate) fn from_pb(e: &pb::Error) -> Self {
        Self {
            kind: ErrorKind::try_from(e.kind).unwrap_or(ErrorKind::Permanent),
            code: e.code.clone(),
            message: e.message.clone(),
        }
    }
}
