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

#[cfg(test)]
mod tests {
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

    #[test]
    fn invalid_utf8_and_unknown_fields() {
        // topic (5) = ff: not UTF-8.
        assert!(Header::decode(&[0x2a, 0x01, 0xff][..]).is_err());
        // An unknown field 20 (varint) is skipped.
        let h = Header::decode(&[0xa0, 0x01, 0x05, 0x10, 0x02][..]).unwrap();
        assert_eq!(h.seq, 2);
    }
}
