//! The frame header, `appfw.v1.Header`, with its strings as slices of the frame they came in.
//!
//! Written by hand rather than generated: prost maps a protobuf `string` to an owned `String`, so
//! decoding a header allocated its topic (and every other string) and stamping the sender
//! allocated again, once per relayed message. Here every string is a [`Str`], a UTF-8 checked
//! [`bytes::Bytes`]: decoding a header out of a `Bytes` frame body only slices it, cloning a
//! header bumps reference counts, and the host stamps a sender name it made once per connection.
//! The wire format is exactly the generated one (same fields, same order, defaults omitted):
//! `build.rs` binds `.appfw.v1.Header` to this type with prost-build's `extern_path`, so the
//! `.proto` stays the specification. The `header_matches_the_generated_encoding` test checks
//! the bytes against prost's own encoding of the same fields.

use bytes::{Buf, BufMut, Bytes};
use prost::DecodeError;
use prost::encoding::{
    self, DecodeContext, WireType, encode_key, encode_varint, encoded_len_varint, key_len,
};

use crate::pb;

/// An immutable UTF-8 string sharing the memory it was decoded from (cheap to clone).
pub type Str = bytestring::ByteString;

/// `appfw.v1.Header`: see `docs/PROTOCOL.md`, section 4.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Header {
    /// The frame type, a [`pb::FrameType`] value (open: unknown values are kept).
    pub r#type: i32,
    /// Sequence number of this frame on this connection and direction, from 1.
    pub seq: u64,
    /// Highest `seq` received from the peer; 0 = none.
    pub ack: u64,
    /// Name of the plugin a relayed message comes from, stamped by the host.
    pub sender: Str,
    /// Topic of PUBLISH/REQUEST, pattern of SUBSCRIBE.
    pub topic: Str,
    /// Correlation id.
    pub request_id: u64,
    /// Absolute deadline, ms since the Unix epoch; 0 = none.
    pub deadline_unix_ms: u64,
    /// W3C `traceparent`, empty when not traced.
    pub traceparent: Str,
    /// W3C `tracestate`.
    pub tracestate: Str,
    /// Set on a REPLY that reports a failure. Boxed: rare, and it would make every frame
    /// (moved several times per relayed message) a sixth larger.
    pub error: Option<Box<pb::Error>>,
    /// Content type of an opaque payload.
    pub content_type: Str,
    /// The receiver's subscription that matched (relayed PUBLISH and REQUEST).
    pub subscription_id: u64,
}

impl Header {
    /// The frame type, [`pb::FrameType::Unspecified`] for an unknown value.
    pub fn r#type(&self) -> pb::FrameType {
        pb::FrameType::try_from(self.r#type).unwrap_or(pb::FrameType::Unspecified)
    }

    /// Sets the frame type.
    pub fn set_type(&mut self, ty: pb::FrameType) {
        self.r#type = ty as i32;
    }
}

/// A header's bytes as they were received, kept so that relaying it writes those bytes with the
/// fields the host stamps appended, instead of encoding every field again. Protobuf decoders
/// (prost, the official runtimes, [`Header`]'s own) take the last occurrence of a scalar or string
/// field, so an appended `sender` overrides whatever the plugin wrote there.
///
/// Valid only while the header's other fields are unchanged: code that changes one of them
/// (the host clearing a malformed trace context) drops it with [`WireHeader::clear`].
///
/// It also marks a *run*: a frame whose payload is several received frames, queued and written
/// as one item ([`WireHeader::run`]).
#[derive(Clone, Debug, Default)]
pub struct WireHeader {
    bytes: Bytes,
    /// Bit n: field n occurs in `bytes` (for n < 16).
    fields: u16,
    /// For a run, the number of frames in the payload; 0 otherwise. (Here rather than in
    /// [`crate::Frame`], where it would grow every frame: this fits in the padding.)
    run: u32,
    /// A run written as one BATCH frame rather than as its messages ([`WireHeader::batch`]).
    batch: bool,
}

/// The fields a relaying host stamps, written after the received bytes: seq, ack, sender,
/// request_id, deadline_unix_ms, subscription_id.
const SEQ: u32 = 2;
const ACK: u32 = 3;
const SENDER: u32 = 4;
const REQUEST_ID: u32 = 6;
const DEADLINE: u32 = 7;
const SUBSCRIPTION_ID: u32 = 12;
/// The stamped numbers at their longest: five one-byte keys and ten-byte varints.
const STAMPS_MAX: usize = 5 * 11;

impl WireHeader {
    /// No received bytes: the header is encoded field by field.
    pub const NONE: Self = Self {
        bytes: Bytes::new(),
        fields: 0,
        run: 0,
        batch: false,
    };

    /// Marks a frame as a run of `frames` relayed messages: its payload holds that many whole
    /// frames as received (length prefixes included, each a PUBLISH without `request_id` or
    /// `deadline_unix_ms`, checked by whoever made the run), and each is written as its
    /// received header with the run header's `sender` and `subscription_id` and its own `seq`
    /// and `ack` appended (see [`crate::writer`]). A relay queues a read's worth of messages
    /// for one subscriber as one such item instead of one decoded frame per message.
    pub const fn run(frames: u32) -> Self {
        Self {
            bytes: Bytes::new(),
            fields: 0,
            run: frames,
            batch: false,
        }
    }

    /// Marks a frame as a run of `frames` relayed messages (as [`WireHeader::run`]) for a
    /// receiver that takes BATCH frames (capability `batch`): the writer sends the payload as
    /// it is in one BATCH frame (or several, to respect the maximum frame size) whose header
    /// carries the run header's `sender`, `topic` and `subscription_id`, instead of stamping
    /// every message.
    pub const fn batch(frames: u32) -> Self {
        Self {
            bytes: Bytes::new(),
            fields: 0,
            run: frames,
            batch: true,
        }
    }

    /// The frames of a run; 0 for an ordinary frame.
    pub fn run_len(&self) -> u32 {
        self.run
    }

    /// Whether a run goes out as BATCH frames ([`WireHeader::batch`]).
    pub fn is_batch(&self) -> bool {
        self.batch
    }

    /// Changes the number of frames of a run (one was cut from it), keeping how it is written.
    pub fn set_run_len(&mut self, frames: u32) {
        self.run = frames;
    }

    /// Whether there are no received bytes to write.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Forgets the received bytes (a field other than the stamped ones changed).
    pub fn clear(&mut self) {
        self.bytes = Bytes::new();
        self.fields = 0;
    }

    /// Bytes [`WireHeader::put_patched`] writes for `h`.
    pub fn patched_len(&self, h: &Header) -> usize {
        patched_len(self.bytes.len(), self.fields, h)
    }

    /// Writes the received bytes, then `h`'s stamped fields: together they decode to `h`.
    #[inline]
    pub fn put_patched(&self, h: &Header, buf: &mut impl BufMut) {
        put_patched(&self.bytes, self.fields, h, buf);
    }
}

/// The fields a run's frames are stamped with even when zero: `sender`, `ack` and
/// `subscription_id` override whatever the publisher wrote there. (`request_id` and
/// `deadline_unix_ms` never occur in a run's frames.)
pub(crate) const RUN_FIELDS: u16 = (1 << SENDER) | (1 << ACK) | (1 << SUBSCRIPTION_ID);

fn has(fields: u16, tag: u32) -> bool {
    fields & (1 << tag) != 0
}

/// A stamped number is appended when it is set, or when the received bytes carry the field
/// (then an explicit 0 overrides the received value).
fn stamp_len(fields: u16, tag: u32, v: u64) -> usize {
    if v != 0 || has(fields, tag) {
        key_len(tag) + encoded_len_varint(v)
    } else {
        0
    }
}

/// Appends a stamped number to `out` at `*n` (a key of one byte: every stamped tag is below 16).
#[inline(always)]
fn stamp_u64(fields: u16, tag: u32, v: u64, out: &mut [u8; STAMPS_MAX], n: &mut usize) {
    if v != 0 || has(fields, tag) {
        // Tags below 16 with the varint wire type: one byte, below 0x80.
        out[*n] = (tag << 3) as u8;
        *n += 1;
        let mut v = v;
        while v >= 0x80 {
            out[*n] = (v as u8) | 0x80;
            v >>= 7;
            *n += 1;
        }
        out[*n] = v as u8;
        *n += 1;
    }
}

/// Bytes [`put_patched`] writes for received header bytes of `len` bytes carrying `fields`.
#[inline(always)]
pub(crate) fn patched_len(len: usize, fields: u16, h: &Header) -> usize {
    let sender = if h.sender.is_empty() && !has(fields, SENDER) {
        0
    } else {
        key_len(SENDER) + encoded_len_varint(h.sender.len() as u64) + h.sender.len()
    };
    len + stamp_len(fields, SEQ, h.seq)
        + stamp_len(fields, ACK, h.ack)
        + sender
        + stamp_len(fields, REQUEST_ID, h.request_id)
        + stamp_len(fields, DEADLINE, h.deadline_unix_ms)
        + stamp_len(fields, SUBSCRIPTION_ID, h.subscription_id)
}

/// Writes received header bytes (carrying `fields`), then `h`'s stamped fields: together they
/// decode to `h`. (Appended fields may come in any order; the numbers are gathered on the stack
/// and written with one copy.)
#[inline(always)]
pub(crate) fn put_patched(bytes: &[u8], fields: u16, h: &Header, buf: &mut impl BufMut) {
    buf.put_slice(bytes);
    if !h.sender.is_empty() || has(fields, SENDER) {
        encode_key(SENDER, WireType::LengthDelimited, buf);
        encode_varint(h.sender.len() as u64, buf);
        buf.put_slice(h.sender.as_bytes());
    }
    let mut out = [0u8; STAMPS_MAX];
    let mut n = 0;
    stamp_u64(fields, SEQ, h.seq, &mut out, &mut n);
    stamp_u64(fields, ACK, h.ack, &mut out, &mut n);
    stamp_u64(fields, REQUEST_ID, h.request_id, &mut out, &mut n);
    stamp_u64(fields, DEADLINE, h.deadline_unix_ms, &mut out, &mut n);
    stamp_u64(fields, SUBSCRIPTION_ID, h.subscription_id, &mut out, &mut n);
    buf.put_slice(&out[..n]);
}

impl Header {
    /// Decodes `bytes`, keeping them as the header's [`WireHeader`] (no copy: a second
    /// reference to the same memory).
    pub fn decode_keeping(bytes: Bytes) -> Result<(Self, WireHeader), DecodeError> {
        let (h, fields) = match decode_fast(&bytes) {
            Some(done) => done,
            None => decode_generic(bytes.clone())?,
        };
        Ok((
            h,
            WireHeader {
                bytes,
                fields,
                run: 0,
                batch: false,
            },
        ))
    }
}

/// What `Message::decode` does, noting which fields occur (bit n: field n).
fn decode_generic(mut buf: Bytes) -> Result<(Header, u16), DecodeError> {
    let mut h = Header::default();
    let mut fields = 0u16;
    while buf.has_remaining() {
        let (tag, wire_type) = encoding::decode_key(&mut buf)?;
        if tag < 16 {
            fields |= 1 << tag;
        }
        prost::Message::merge_field(&mut h, tag, wire_type, &mut buf, DecodeContext::default())?;
    }
    Ok((h, fields))
}

/// A varint at `*i` of `b` (at most 10 bytes, as prost reads them); `None` if malformed.
#[inline(always)]
pub(crate) fn varint(b: &[u8], i: &mut usize) -> Option<u64> {
    // One byte: the usual case for keys and small numbers.
    let first = *b.get(*i)?;
    if first < 0x80 {
        *i += 1;
        return Some(u64::from(first));
    }
    let mut v = 0u64;
    for n in 0..10 {
        let byte = *b.get(*i)?;
        *i += 1;
        if n == 9 && byte > 1 {
            return None;
        }
        v |= u64::from(byte & 0x7f) << (7 * n);
        if byte < 0x80 {
            return Some(v);
        }
    }
    None
}

/// `*i + len` if that is within `b`, for a field of `len` bytes at `*i`.
#[inline(always)]
pub(crate) fn skip(b: &[u8], i: usize, len: u64) -> Option<usize> {
    i.checked_add(usize::try_from(len).ok()?)
        .filter(|&end| end <= b.len())
}

/// The usual header (known fields of their own wire types, unknown ones skipped) decoded
/// without prost's generic per-field machinery, which was a sixth of the relay's time per
/// message. `None` for anything else (an `error` field, a group, a wrong wire type, a malformed
/// varint or string): [`decode_generic`] then decodes it, or refuses it with prost's error.
fn decode_fast(bytes: &Bytes) -> Option<(Header, u16)> {
    let b: &[u8] = bytes;
    let mut h = Header::default();
    let mut fields = 0u16;
    let mut i = 0;
    while i < b.len() {
        // A key beyond 32 bits is malformed (prost says so).
        let key = u32::try_from(varint(b, &mut i)?).ok()?;
        let tag = key >> 3;
        if tag < 16 {
            fields |= 1 << tag;
        }
        match (tag, key & 7) {
            // As prost reads an int32: the varint truncated.
            (1, 0) => h.r#type = varint(b, &mut i)? as i32,
            (2, 0) => h.seq = varint(b, &mut i)?,
            (3, 0) => h.ack = varint(b, &mut i)?,
            (6, 0) => h.request_id = varint(b, &mut i)?,
            (7, 0) => h.deadline_unix_ms = varint(b, &mut i)?,
            (12, 0) => h.subscription_id = varint(b, &mut i)?,
            (4 | 5 | 8 | 9 | 11, 2) => {
                let len = varint(b, &mut i)?;
                let end = skip(b, i, len)?;
                let s = Str::try_from(bytes.slice(i..end)).ok()?;
                i = end;
                match tag {
                    4 => h.sender = s,
                    5 => h.topic = s,
                    8 => h.traceparent = s,
                    9 => h.tracestate = s,
                    _ => h.content_type = s,
                }
            }
            // Tag 0, `error`, a known field of another wire type: the generic path.
            (0..=12, _) => return None,
            (_, 0) => {
                varint(b, &mut i)?;
            }
            (_, 1) => i = skip(b, i, 8)?,
            (_, 2) => {
                let len = varint(b, &mut i)?;
                i = skip(b, i, len)?;
            }
            (_, 5) => i = skip(b, i, 4)?,
            _ => return None,
        }
    }
    Some((h, fields))
}

fn str_len(tag: u32, s: &Str) -> usize {
    if s.is_empty() {
        0
    } else {
        key_len(tag) + encoded_len_varint(s.len() as u64) + s.len()
    }
}

fn put_str(tag: u32, s: &Str, buf: &mut impl BufMut) {
    if !s.is_empty() {
        encode_key(tag, WireType::LengthDelimited, buf);
        encode_varint(s.len() as u64, buf);
        buf.put_slice(s.as_bytes());
    }
}

fn u64_len(tag: u32, v: u64) -> usize {
    if v == 0 {
        0
    } else {
        encoding::uint64::encoded_len(tag, &v)
    }
}

fn put_u64(tag: u32, v: u64, buf: &mut impl BufMut) {
    if v != 0 {
        encoding::uint64::encode(tag, &v, buf);
    }
}

/// A string field: a slice of `buf` when it is a `Bytes` (no copy), checked to be UTF-8.
fn merge_str(
    wire_type: WireType,
    value: &mut Str,
    buf: &mut impl Buf,
    ctx: DecodeContext,
) -> Result<(), DecodeError> {
    let mut raw = Bytes::new();
    encoding::bytes::merge(wire_type, &mut raw, buf, ctx)?;
    match Str::try_from(raw) {
        Ok(s) => {
            *value = s;
            Ok(())
        }
        Err(_) => {
            *value = Str::new();
            // The one public way to make a decode error of our own (what generated code uses).
            #[allow(deprecated)]
            Err(DecodeError::new(
                "invalid string value: data is not UTF-8 encoded",
            ))
        }
    }
}

impl prost::Message for Header {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        if self.r#type != 0 {
            encoding::int32::encode(1, &self.r#type, buf);
        }
        put_u64(2, self.seq, buf);
        put_u64(3, self.ack, buf);
        put_str(4, &self.sender, buf);
        put_str(5, &self.topic, buf);
        put_u64(6, self.request_id, buf);
        put_u64(7, self.deadline_unix_ms, buf);
        put_str(8, &self.traceparent, buf);
        put_str(9, &self.tracestate, buf);
        if let Some(e) = &self.error {
            encoding::message::encode(10, e.as_ref(), buf);
        }
        put_str(11, &self.content_type, buf);
        put_u64(12, self.subscription_id, buf);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        match tag {
            1 => encoding::int32::merge(wire_type, &mut self.r#type, buf, ctx),
            2 => encoding::uint64::merge(wire_type, &mut self.seq, buf, ctx),
            3 => encoding::uint64::merge(wire_type, &mut self.ack, buf, ctx),
            4 => merge_str(wire_type, &mut self.sender, buf, ctx),
            5 => merge_str(wire_type, &mut self.topic, buf, ctx),
            6 => encoding::uint64::merge(wire_type, &mut self.request_id, buf, ctx),
            7 => encoding::uint64::merge(wire_type, &mut self.deadline_unix_ms, buf, ctx),
            8 => merge_str(wire_type, &mut self.traceparent, buf, ctx),
            9 => merge_str(wire_type, &mut self.tracestate, buf, ctx),
            10 => encoding::message::merge(
                wire_type,
                self.error.get_or_insert_with(Box::default).as_mut(),
                buf,
                ctx,
            ),
            11 => merge_str(wire_type, &mut self.content_type, buf, ctx),
            12 => encoding::uint64::merge(wire_type, &mut self.subscription_id, buf, ctx),
            _ => encoding::skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        let ty = if self.r#type == 0 {
            0
        } else {
            encoding::int32::encoded_len(1, &self.r#type)
        };
        ty + u64_len(2, self.seq)
            + u64_len(3, self.ack)
            + str_len(4, &self.sender)
            + str_len(5, &self.topic)
            + u64_len(6, self.request_id)
            + u64_len(7, self.deadline_unix_ms)
            + str_len(8, &self.traceparent)
            + str_len(9, &self.tracestate)
            + self
                .error
                .as_ref()
                .map_or(0, |e| encoding::message::encoded_len(10, e.as_ref()))
            + str_len(11, &self.content_type)
            + u64_len(12, self.subscription_id)
    }

    fn clear(&mut self) {
        *self = Self::default();
    }
}

/// Arbitrary headers for the property tests of this crate.
#[cfg(test)]
pub(crate) mod strategies {
    use super::{Header, pb};
    use proptest::prelude::*;

    /// A header with every field drawn (an `error` or none).
    pub(crate) fn arb_header() -> impl Strategy<Value = Header> {
        (
            (
                0i32..40,
                any::<u64>(),
                any::<u64>(),
                "[a-z$]{0,12}",
                "[a-z.*>]{0,40}",
            ),
            (
                any::<u64>(),
                any::<u64>(),
                "[0-9a-f-]{0,55}",
                "[a-z=]{0,10}",
            ),
            (
                proptest::option::of((0i32..4, "[a-z_]{0,12}", ".{0,30}")),
                "[a-z/]{0,16}",
                any::<u64>(),
            ),
        )
            .prop_map(
                |((ty, seq, ack, sender, topic), (rid, dl, tp, ts), (err, ct, sub))| Header {
                    r#type: ty,
                    seq,
                    ack,
                    sender: sender.into(),
                    topic: topic.into(),
                    request_id: rid,
                    deadline_unix_ms: dl,
                    traceparent: tp.into(),
                    tracestate: ts.into(),
                    error: err.map(|(kind, code, message)| {
                        Box::new(pb::Error {
                            kind,
                            code,
                            message,
                        })
                    }),
                    content_type: ct.into(),
                    subscription_id: sub,
                },
            )
    }
}

#[cfg(test)]
mod tests {
    use super::strategies::arb_header;
    use super::*;
    use prost::Message;

    /// The generated shape of `Header` (owned strings), encoded by prost-derive, to compare
    /// bytes with.
    #[derive(Clone, PartialEq, prost::Message)]
    struct Generated {
        #[prost(int32, tag = "1")]
        r#type: i32,
        #[prost(uint64, tag = "2")]
        seq: u64,
        #[prost(uint64, tag = "3")]
        ack: u64,
        #[prost(string, tag = "4")]
        sender: String,
        #[prost(string, tag = "5")]
        topic: String,
        #[prost(uint64, tag = "6")]
        request_id: u64,
        #[prost(uint64, tag = "7")]
        deadline_unix_ms: u64,
        #[prost(string, tag = "8")]
        traceparent: String,
        #[prost(string, tag = "9")]
        tracestate: String,
        #[prost(message, optional, tag = "10")]
        error: Option<pb::Error>,
        #[prost(string, tag = "11")]
        content_type: String,
        #[prost(uint64, tag = "12")]
        subscription_id: u64,
    }

    fn sample() -> (Header, Generated) {
        let e = pb::Error {
            kind: pb::ErrorKind::Temporary as i32,
            code: "overloaded".into(),
            message: "busy".into(),
        };
        let h = Header {
            r#type: 9,
            seq: 300,
            ack: 1 << 40,
            sender: "a".into(),
            topic: "orders.eu".into(),
            request_id: 7,
            deadline_unix_ms: 1_700_000_000_000,
            traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
            tracestate: "congo=1".into(),
            error: Some(Box::new(e.clone())),
            content_type: "application/json".into(),
            subscription_id: 3,
        };
        let g = Generated {
            r#type: h.r#type,
            seq: h.seq,
            ack: h.ack,
            sender: h.sender.to_string(),
            topic: h.topic.to_string(),
            request_id: h.request_id,
            deadline_unix_ms: h.deadline_unix_ms,
            traceparent: h.traceparent.to_string(),
            tracestate: h.tracestate.to_string(),
            error: Some(e),
            content_type: h.content_type.to_string(),
            subscription_id: h.subscription_id,
        };
        (h, g)
    }

    #[test]
    fn header_matches_the_generated_encoding() {
        let (h, g) = sample();
        assert_eq!(h.encode_to_vec(), g.encode_to_vec());
        assert_eq!(h.encoded_len(), g.encoded_len());
        assert_eq!(Header::default().encode_to_vec(), Vec::<u8>::new());
        let back = Header::decode(Bytes::from(g.encode_to_vec())).unwrap();
        assert_eq!(back, h);
        // Negative enum values and a partial header too.
        let g = Generated {
            r#type: -1,
            topic: "t".into(),
            ..Generated::default()
        };
        let h = Header::decode(Bytes::from(g.encode_to_vec())).unwrap();
        assert_eq!((h.r#type, &*h.topic), (-1, "t"));
        assert_eq!(h.encode_to_vec(), g.encode_to_vec());
    }

    #[test]
    fn strings_are_slices_of_the_decoded_buffer() {
        let (h, _) = sample();
        let wire = Bytes::from(h.encode_to_vec());
        let back = Header::decode(wire.clone()).unwrap();
        let range = wire.as_ptr() as usize..wire.as_ptr() as usize + wire.len();
        assert!(range.contains(&(back.topic.as_ptr() as usize)));
        assert!(range.contains(&(back.sender.as_ptr() as usize)));
    }

    /// Zero some of the numbers so the "field absent" cases come up often.
    fn sparse(h: Header, mask: u8) -> Header {
        let z = |bit: u8, v: u64| if mask & (1 << bit) != 0 { 0 } else { v };
        Header {
            seq: z(0, h.seq),
            ack: z(1, h.ack),
            request_id: z(2, h.request_id),
            deadline_unix_ms: z(3, h.deadline_unix_ms),
            subscription_id: z(4, h.subscription_id),
            sender: if mask & (1 << 5) != 0 {
                Str::new()
            } else {
                h.sender.clone()
            },
            ..h
        }
    }

    proptest::proptest! {
        /// A received header with its stamped fields changed, written as the received bytes
        /// plus the appended stamps, decodes to the same header as one encoded field by field.
        #[test]
        fn patched_header_decodes_like_a_re_encoded_one(
            received in arb_header(),
            stamps in arb_header(),
            m1 in proptest::prelude::any::<u8>(),
            m2 in proptest::prelude::any::<u8>(),
        ) {
            let received = sparse(received, m1);
            let stamps = sparse(stamps, m2);
            let (mut h, wire) = Header::decode_keeping(Bytes::from(received.encode_to_vec())).unwrap();
            proptest::prop_assert_eq!(&h, &received);
            h.seq = stamps.seq;
            h.ack = stamps.ack;
            h.sender = stamps.sender.clone();
            h.request_id = stamps.request_id;
            h.deadline_unix_ms = stamps.deadline_unix_ms;
            h.subscription_id = stamps.subscription_id;
            let mut patched = Vec::new();
            wire.put_patched(&h, &mut patched);
            proptest::prop_assert_eq!(patched.len(), wire.patched_len(&h));
            let back = Header::decode(Bytes::from(patched)).unwrap();
            proptest::prop_assert_eq!(&back, &h);
            proptest::prop_assert_eq!(&back, &Header::decode(Bytes::from(h.encode_to_vec())).unwrap());
        }
    }

    proptest::proptest! {
        /// The fast decoder agrees with prost's on encoded headers with arbitrary bytes after
        /// them, and on arbitrary bytes: the same header, or both refuse.
        #[test]
        fn fast_decoding_agrees_with_prost(
            h in arb_header(),
            tail in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..24),
            junk in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
        ) {
            let mut wire = h.encode_to_vec();
            wire.extend_from_slice(&tail);
            for input in [wire, junk] {
                let input = Bytes::from(input);
                let ours = Header::decode_keeping(input.clone()).map(|(h, _)| h).ok();
                let prost = Header::decode(input).ok();
                proptest::prop_assert_eq!(ours, prost);
            }
        }
    }

    #[test]
    fn a_forged_sender_is_overridden_and_unknown_fields_pass_through() {
        // sender = "evil", an unknown field 20, then the host's stamps.
        let mut received = Header {
            r#type: 8,
            sender: "evil".into(),
            topic: "t".into(),
            request_id: 9,
            ..Header::default()
        }
        .encode_to_vec();
        received.extend_from_slice(&[0xa0, 0x01, 0x05]);
        let (mut h, wire) = Header::decode_keeping(Bytes::from(received)).unwrap();
        h.sender = "a".into();
        h.request_id = 0;
        let mut out = Vec::new();
        wire.put_patched(&h, &mut out);
        let back = Header::decode(Bytes::from(out)).unwrap();
        assert_eq!(
            (&*back.sender, back.request_id, &*back.topic),
            ("a", 0, "t")
        );
        assert!(WireHeader::NONE.is_empty() && !wire.is_empty());
    }

    #[test]
    fn invalid_utf8_and_unknown_fields() {
        // topic (5) = ff: not UTF-8.
        assert!(Header::decode(&[0x2a, 0x01, 0xff][..]).is_err());
        // An unknown field 20 (varint) is skipped.
        let h = Header::decode(&[0xa0, 0x01, 0x05, 0x10, 0x02][..]).unwrap();
        assert_eq!(h.seq, 2);
    }
}
