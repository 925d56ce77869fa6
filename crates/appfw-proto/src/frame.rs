//! Length-prefixed frame codec.
//!
//! Written by hand rather than stacking `LengthDelimitedCodec` with a second parser: the frame has
//! two length fields and the decoder must hand out the payload as a zero-copy slice of the read
//! buffer, which is the whole point of the relay design.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::Message;
use tokio_util::codec::{Decoder, Encoder};

use crate::WireHeader;
use crate::pb::{FrameType, Header};
use crate::{DEFAULT_MAX_FRAME_SIZE, HEADER_LEN_LEN, LENGTH_PREFIX_LEN};

/// One frame: the decoded header and the payload bytes as received.
#[derive(Clone, Debug, Default)]
pub struct Frame {
    /// The fixed header.
    pub header: Header,
    /// The payload: opaque for bus messages, a protobuf message for control frames.
    pub payload: Bytes,
    /// The header's bytes as received, when the codec keeps them ([`FrameCodec::keeping_wire`]):
    /// then the frame is written as those bytes plus the stamped fields (see [`WireHeader`]).
    pub wire: WireHeader,
}

/// Two frames are equal when their headers and payloads are: `wire` is only a way to write the
/// header.
impl PartialEq for Frame {
    fn eq(&self, other: &Self) -> bool {
        self.header == other.header && self.payload == other.payload
    }
}

impl Frame {
    /// A frame of `ty` with an empty header otherwise.
    pub fn new(ty: FrameType, payload: Bytes) -> Self {
        Self {
            header: Header {
                r#type: ty as i32,
                ..Header::default()
            },
            payload,
            wire: WireHeader::NONE,
        }
    }

    /// A control frame whose payload is the encoded protobuf `msg`.
    pub fn control<M: Message>(ty: FrameType, msg: &M) -> Self {
        Self::new(ty, Bytes::from(msg.encode_to_vec()))
    }

    /// The frame type, or `None` for a type this version does not know (to be skipped).
    pub fn frame_type(&self) -> Option<FrameType> {
        FrameType::try_from(self.header.r#type).ok()
    }

    /// Decodes the payload as the control message `M`.
    pub fn decode_payload<M: Message + Default>(&self) -> Result<M, FrameError> {
        M::decode(self.payload.clone()).map_err(|e| FrameError::Payload {
            frame_type: self.header.r#type,
            source: e,
        })
    }
}

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The length prefix announces more than the negotiated maximum.
    #[error("frame of {len} bytes exceeds the maximum frame size of {max} bytes")]
    TooLarge {
        /// Announced length.
        len: usize,
        /// Allowed maximum.
        max: usize,
    },
    /// The frame is shorter than its own header-length field says.
    #[error(
        "malformed frame: header length {header_len} does not fit in a frame of {frame_len} bytes"
    )]
    HeaderOverflow {
        /// Value of the header-length field.
        header_len: usize,
        /// Value of the frame-length prefix.
        frame_len: usize,
    },
    /// The header is not a valid protobuf `Header`.
    #[error("malformed frame header: {0}")]
    Header(#[source] prost::DecodeError),
    /// A control frame's payload is not the protobuf message its type requires.
    #[error("malformed payload of frame type {frame_type}: {source}")]
    Payload {
        /// The numeric frame type.
        frame_type: i32,
        /// The protobuf error.
        #[source]
        source: prost::DecodeError,
    },
    /// The encoded header does not fit in the 16-bit header-length field.
    #[error("frame header of {0} bytes exceeds 65535 bytes")]
    HeaderTooLarge(usize),
    /// The stream ended in the middle of a frame.
    #[error("connection closed in the middle of a frame ({0} bytes buffered)")]
    Truncated(usize),
    /// A BATCH frame's payload is not a sequence of whole PUBLISH frames on its topic.
    #[error("malformed BATCH frame: {0}")]
    Batch(&'static str),
    /// The socket failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

impl FrameError {
    /// Stable snake_case code for `ProtocolError.code` and logs.
    pub fn code(&self) -> &'static str {
        match self {
            Self::TooLarge { .. } => "frame_too_large",
            Self::HeaderOverflow { .. } | Self::Header(_) | Self::HeaderTooLarge(_) => {
                "malformed_frame"
            }
            Self::Payload { .. } => "malformed_payload",
            Self::Truncated(_) => "truncated_frame",
            Self::Batch(_) => "malformed_batch",
            Self::Io(_) => "io_error",
        }
    }
}

/// Encodes one frame (length prefix included) at the end of `dst`.
pub fn encode_frame(
    header: &Header,
    payload: &[u8],
    max_frame_size: usize,
    dst: &mut BytesMut,
) -> Result<(), FrameError> {
    encode_parts(header, &WireHeader::NONE, payload, max_frame_size, dst)
}

/// Encodes `frame` (length prefix included) at the end of `dst`; its header from the received
/// bytes plus the stamped fields when it has them.
pub fn encode_frame_of(
    frame: &Frame,
    payload: &[u8],
    max_frame_size: usize,
    dst: &mut BytesMut,
) -> Result<(), FrameError> {
    encode_parts(&frame.header, &frame.wire, payload, max_frame_size, dst)
}

#[inline(always)]
fn encode_parts(
    header: &Header,
    wire: &WireHeader,
    payload: &[u8],
    max_frame_size: usize,
    dst: &mut BytesMut,
) -> Result<(), FrameError> {
    // A patched header repeats the stamped fields; in the rare case that does not fit the
    // 16-bit length, the plain encoding (each field once) is tried.
    let patched = (!wire.is_empty())
        .then(|| wire.patched_len(header))
        .filter(|&n| n <= usize::from(u16::MAX));
    let header_len = patched.unwrap_or_else(|| header.encoded_len());
    if header_len > usize::from(u16::MAX) {
        return Err(FrameError::HeaderTooLarge(header_len));
    }
    let frame_len = HEADER_LEN_LEN + header_len + payload.len();
    if frame_len > max_frame_size || u32::try_from(frame_len).is_err() {
        return Err(FrameError::TooLarge {
            len: frame_len,
            max: max_frame_size,
        });
    }
    dst.reserve(LENGTH_PREFIX_LEN + frame_len);
    // Both casts were range-checked above.
    dst.put_u32(frame_len as u32);
    dst.put_u16(header_len as u16);
    // Room was reserved above: the header goes in without measuring it again.
    match patched {
        Some(_) => wire.put_patched(header, dst),
        None => header.encode_raw(dst),
    }
    dst.put_slice(payload);
    Ok(())
}

/// Decodes a frame body (everything after the length prefix). The payload shares `body`'s memory.
pub fn decode_body(body: Bytes) -> Result<Frame, FrameError> {
    decode_body_with(body, false)
}

/// [`decode_body`], keeping the header's bytes in [`Frame::wire`] if `keep_wire`.
#[inline]
fn decode_body_with(mut body: Bytes, keep_wire: bool) -> Result<Frame, FrameError> {
    let frame_len = body.len();
    if frame_len < HEADER_LEN_LEN {
        return Err(FrameError::HeaderOverflow {
            header_len: HEADER_LEN_LEN,
            frame_len,
        });
    }
    let header_len = usize::from(body.get_u16());
    if header_len > body.len() {
        return Err(FrameError::HeaderOverflow {
            header_len,
            frame_len,
        });
    }
    let raw = body.split_to(header_len);
    let (header, wire) = if keep_wire {
        Header::decode_keeping(raw).map_err(FrameError::Header)?
    } else {
        (
            Header::decode(raw).map_err(FrameError::Header)?,
            WireHeader::NONE,
        )
    };
    Ok(Frame {
        header,
        payload: body,
        wire,
    })
}

/// `tokio_util` codec for [`Frame`]s with a maximum frame size.
#[derive(Clone, Debug)]
pub struct FrameCodec {
    max_frame_size: usize,
    keep_wire: bool,
}

impl Default for FrameCodec {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_FRAME_SIZE)
    }
}

impl FrameCodec {
    /// A codec refusing frames whose length prefix exceeds `max_frame_size`.
    pub fn new(max_frame_size: usize) -> Self {
        Self {
            max_frame_size,
            keep_wire: false,
        }
    }

    /// The same codec, keeping each decoded header's bytes in [`Frame::wire`]: for a relay,
    /// whose frames go out again with only stamped fields changed.
    pub fn keeping_wire(self) -> Self {
        Self {
            keep_wire: true,
            ..self
        }
    }

    /// The configured maximum.
    pub fn max_frame_size(&self) -> usize {
        self.max_frame_size
    }
}

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = FrameError;

    #[inline]
    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        if src.len() < LENGTH_PREFIX_LEN {
            return Ok(None);
        }
        let mut prefix = [0u8; LENGTH_PREFIX_LEN];
        prefix.copy_from_slice(&src[..LENGTH_PREFIX_LEN]);
        let frame_len = u32::from_be_bytes(prefix) as usize;
        if frame_len > self.max_frame_size {
            return Err(FrameError::TooLarge {
                len: frame_len,
                max: self.max_frame_size,
            });
        }
        let total = LENGTH_PREFIX_LEN + frame_len;
        if src.len() < total {
            src.reserve(total - src.len());
            return Ok(None);
        }
        src.advance(LENGTH_PREFIX_LEN);
        decode_body_with(src.split_to(frame_len).freeze(), self.keep_wire).map(Some)
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        match self.decode(buf)? {
            Some(frame) => Ok(Some(frame)),
            None if buf.is_empty() => Ok(None),
            None => Err(FrameError::Truncated(buf.len())),
        }
    }
}

impl Encoder<Frame> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, item: Frame, dst: &mut BytesMut) -> Result<(), FrameError> {
        encode_frame_of(&item, &item.payload, self.max_frame_size, dst)
    }
}

impl Encoder<&Frame> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, item: &Frame, dst: &mut BytesMut) -> Result<(), FrameError> {
        encode_frame_of(item, &item.payload, self.max_frame_size, dst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::header::strategies::arb_header;
    use crate::pb::{self, ErrorKind};
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trip(header in arb_header(), payload in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let mut codec = FrameCodec::new(1 << 20);
            let mut buf = BytesMut::new();
            let frame = Frame { header, payload: Bytes::from(payload), wire: WireHeader::NONE };
            codec.encode(&frame, &mut buf).unwrap();
            let decoded = codec.decode(&mut buf).unwrap().unwrap();
            prop_assert_eq!(decoded, frame);
            prop_assert!(buf.is_empty());
        }

        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..4096), split in 0usize..4096) {
            let mut codec = FrameCodec::new(1024);
            let mut buf = BytesMut::new();
            let split = split.min(data.len());
            buf.extend_from_slice(&data[..split]);
            let mut steps = 0;
            // Feed in two chunks, decode until the codec wants more or reports an error.
            while let Ok(Some(_)) = codec.decode(&mut buf) { steps += 1; if steps > 5000 { break; } }
            buf.extend_from_slice(&data[split..]);
            while let Ok(Some(_)) = codec.decode(&mut buf) { steps += 1; if steps > 5000 { break; } }
            let _ = codec.decode_eof(&mut buf);
        }

        #[test]
        fn frames_survive_arbitrary_chunking(payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 1..20), chunk in 1usize..64) {
            let mut codec = FrameCodec::default();
            let mut wire = BytesMut::new();
            for (i, p) in payloads.iter().enumerate() {
                let mut f = Frame::new(FrameType::Publish, Bytes::from(p.clone()));
                f.header.seq = i as u64 + 1;
                codec.encode(f, &mut wire).unwrap();
            }
            let mut buf = BytesMut::new();
            let mut out = Vec::new();
            for piece in wire.chunks(chunk) {
                buf.extend_from_slice(piece);
                while let Some(f) = codec.decode(&mut buf).unwrap() { out.push(f); }
            }
            prop_assert_eq!(out.len(), payloads.len());
            for (i, (f, p)) in out.iter().zip(&payloads).enumerate() {
                prop_assert_eq!(f.header.seq, i as u64 + 1);
                prop_assert_eq!(&f.payload[..], &p[..]);
            }
        }
    }

    #[test]
    fn a_relayed_frame_is_written_from_its_received_header() {
        let mut codec = FrameCodec::default().keeping_wire();
        let mut f = Frame::new(FrameType::Publish, Bytes::from_static(b"data"));
        f.header.topic = "a.b".into();
        f.header.sender = "forged".into();
        f.header.seq = 5;
        let mut buf = BytesMut::new();
        codec.encode(&f, &mut buf).unwrap();
        let received = buf.len() - LENGTH_PREFIX_LEN;
        let mut got = codec.decode(&mut buf).unwrap().unwrap();
        assert!(!got.wire.is_empty());
        got.header.sender = "pub".into();
        got.header.seq = 1;
        got.header.subscription_id = 3;
        let mut out = BytesMut::new();
        codec.encode(&got, &mut out).unwrap();
        let back = FrameCodec::default().decode(&mut out).unwrap().unwrap();
        assert_eq!(back, got);
        assert!(
            back.wire.is_empty(),
            "a default codec keeps no header bytes"
        );
        // A frame over the maximum after the stamps is refused, not written.
        let mut small = FrameCodec::new(received);
        assert!(small.encode(&got, &mut BytesMut::new()).is_err());
    }

    #[test]
    fn oversized_frame_is_refused_before_buffering() {
        let mut codec = FrameCodec::new(100);
        let mut buf = BytesMut::from(&[0u8, 0, 1, 0][..]);
        let err = codec.decode(&mut buf).unwrap_err();
        assert_eq!(err.code(), "frame_too_large");
        assert!(
            err.to_string()
                .contains("256 bytes exceeds the maximum frame size of 100")
        );
    }

    #[test]
    fn header_length_past_end_is_malformed() {
        let mut codec = FrameCodec::default();
        let mut buf = BytesMut::from(&[0u8, 0, 0, 3, 0, 9, 1][..]);
        let err = codec.decode(&mut buf).unwrap_err();
        assert_eq!(err.code(), "malformed_frame");
    }

    #[test]
    fn garbage_header_is_malformed() {
        let mut codec = FrameCodec::default();
        let mut buf = BytesMut::from(&[0u8, 0, 0, 4, 0, 2, 0xff, 0xff][..]);
        assert!(matches!(codec.decode(&mut buf), Err(FrameError::Header(_))));
    }

    #[test]
    fn truncated_stream_is_reported_at_eof() {
        let mut codec = FrameCodec::default();
        let mut buf = BytesMut::from(&[0u8, 0, 0, 10, 0][..]);
        assert!(matches!(
            codec.decode_eof(&mut buf),
            Err(FrameError::Truncated(5))
        ));
    }

    #[test]
    fn unknown_frame_type_decodes_and_is_reported_as_unknown() {
        let mut codec = FrameCodec::default();
        let mut f = Frame::new(FrameType::Publish, Bytes::from_static(b"x"));
        f.header.r#type = 999;
        let mut buf = BytesMut::new();
        codec.encode(&f, &mut buf).unwrap();
        let got = codec.decode(&mut buf).unwrap().unwrap();
        assert_eq!(got.frame_type(), None);
        let e = pb::Error {
            kind: ErrorKind::Temporary as i32,
            ..Default::default()
        };
        assert_eq!(e.kind(), ErrorKind::Temporary);
    }

    #[test]
    fn payload_is_a_zero_copy_slice_of_the_read_buffer() {
        let mut codec = FrameCodec::default();
        let mut buf = BytesMut::new();
        codec
            .encode(
                Frame::new(FrameType::Publish, Bytes::from(vec![7u8; 1000])),
                &mut buf,
            )
            .unwrap();
        let base = buf.as_ptr() as usize;
        let end = base + buf.len();
        let f = codec.decode(&mut buf).unwrap().unwrap();
        let p = f.payload.as_ptr() as usize;
        assert!(
            p >= base && p < end,
            "payload must point into the read buffer"
        );
    }
}
