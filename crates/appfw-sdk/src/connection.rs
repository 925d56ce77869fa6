//! Opening the inherited socket and the handshake.

use std::os::fd::{FromRawFd, OwnedFd};
use std::time::Duration;

use appfw_proto::pb::{self, FrameType};
use appfw_proto::{ENV_PLUGIN_FD, Frame, FrameCodec};
use futures_util::{SinkExt, StreamExt};
use tokio::net::UnixStream;
use tokio_util::codec::Framed;

use crate::SdkError;

/// Takes the socket named by `APPFW_PLUGIN_FD`, checks that it is a Unix stream socket and marks
/// it close-on-exec, so the plugin's own children do not inherit the host connection (a child
/// that reads the inherited variable finds no such descriptor and gets a clear error). The
/// variable is left alone: changing the environment is unsound once threads run.
pub(crate) fn stream_from_env() -> Result<UnixStream, SdkError> {
    let value = std::env::var(ENV_PLUGIN_FD).map_err(|_| SdkError::NotAPlugin(ENV_PLUGIN_FD))?;
    let bad = |reason: String| SdkError::BadFd {
        var: ENV_PLUGIN_FD,
        value: value.clone(),
        reason,
    };
    let raw: i32 = value
        .trim()
        .parse()
        .map_err(|_| bad("not a decimal file descriptor number".into()))?;
    if raw < 3 {
        return Err(bad("descriptors 0-2 are stdio, not the host socket".into()));
    }
    // Check before taking ownership: fcntl on a closed descriptor fails with EBADF.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(raw) };
    rustix::io::fcntl_getfd(borrowed).map_err(|e| bad(format!("not an open descriptor ({e})")))?;
    let ty = rustix::net::sockopt::socket_type(borrowed)
        .map_err(|e| bad(format!("not a socket ({e})")))?;
    if ty != rustix::net::SocketType::STREAM {
        return Err(bad("not a stream socket".into()));
    }
    rustix::io::fcntl_setfd(borrowed, rustix::io::FdFlags::CLOEXEC)
        .map_err(|e| bad(format!("cannot set close-on-exec ({e})")))?;
    // SAFETY: the descriptor is open (checked above) and was inherited for this process to own.
    let owned = unsafe { OwnedFd::from_raw_fd(raw) };
    let std_stream = std::os::unix::net::UnixStream::from(owned);
    std_stream.set_nonblocking(true)?;
    Ok(UnixStream::from_std(std_stream)?)
}

/// Sends HELLO and waits for WELCOME (or REFUSE) within `timeout`.
pub(crate) async fn handshake(
    framed: &mut Framed<UnixStream, FrameCodec>,
    hello: pb::Hello,
    timeout: Duration,
) -> Result<(pb::Welcome, u64), SdkError> {
    let mut frame = Frame::control(FrameType::Hello, &hello);
    frame.header.seq = 1;
    let exchange = async {
        framed.send(frame).await?;
        loop {
            let Some(reply) = framed.next().await else {
                return Err(SdkError::Handshake(
                    "the host closed the connection before answering HELLO".into(),
                ));
            };
            let reply = reply?;
            match reply.frame_type() {
                Some(FrameType::Welcome) => {
                    return Ok((reply.decode_payload::<pb::Welcome>()?, reply.header.seq));
                }
                Some(FrameType::Refuse) => {
                    let r: pb::Refuse = reply.decode_payload()?;
                    return Err(SdkError::Refused(r.reason));
                }
                Some(FrameType::ProtocolError) => {
                    let e: pb::ProtocolError = reply.decode_payload()?;
                    return Err(SdkError::Handshake(format!("{}: {}", e.code, e.message)));
                }
                // Skip anything else (e.g. an early PING or a future frame type).
                _ => {}
            }
        }
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| SdkError::Handshake(format!("no WELCOME from the host within {timeout:?}")))?
}
