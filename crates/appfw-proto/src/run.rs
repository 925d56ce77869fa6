//! Runs: a relay's read of PUBLISH frames on one topic, queued for a subscriber as one item.
//!
//! A relay that decodes every frame into a [`crate::Frame`] and queues it pays per message for
//! the decode, the reference counts of each sliced field and the moves of the frame. A stream of
//! messages on one topic does not need any of that: [`scan_publish_run`] checks the frames a read
//! holds where they lie (the same checks the decoder and the host's relay would make), and the
//! whole run goes to each subscriber as one frame marked with [`crate::WireHeader::run`]. The
//! writer stamps each message of the run as it copies it into its batch (`writer::put_run`).
//!
//! Only the plain case is taken: a frame the scan does not accept (another type or topic, a
//! request id or deadline, an `error`, a malformed or unusual field, a payload the writer sends
//! from its own memory) ends the run and goes through the ordinary decoder, which decides.

use crate::header::{skip, varint};
use crate::trace::{TraceParent, valid_tracestate};
use crate::writer::DIRECT_PAYLOAD;
use crate::{HEADER_LEN_LEN, LENGTH_PREFIX_LEN};

/// The whole frames at the start of a buffer that form a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunScan {
    /// Frames in the run.
    pub frames: u32,
    /// Bytes of the buffer they take (length prefixes included).
    pub len: usize,
    /// Their payload bytes.
    pub payload_bytes: u64,
    /// The `seq` of the last one (0 if it has none).
    pub last_seq: u64,
    /// Where the first one's topic is in the buffer (so a run can name its topic with a slice
    /// of itself).
    pub topic_at: usize,
}

/// `FRAME_TYPE_PUBLISH`.
const PUBLISH: u64 = crate::pb::FrameType::Publish as u64;

/// The longest run of whole PUBLISH frames on `topic` at the start of `buf`, at most
/// `max_frames` of them, each of at most `max_frame_size` bytes, whose headers carry only
/// `type`, `seq`, `ack`, `sender`, `topic`, `traceparent` and `tracestate` (both absent, or a
/// valid W3C pair: the host would clear a malformed one), `content_type`, `subscription_id` and
/// fields unknown to this version, all well-formed, and whose payloads are smaller than
/// [`DIRECT_PAYLOAD`].
pub fn scan_publish_run(
    buf: &[u8],
    topic: &[u8],
    max_frames: usize,
    max_frame_size: usize,
) -> RunScan {
    let mut scan = RunScan::default();
    let mut at = 0;
    while (scan.frames as usize) < max_frames && scan.frames < u32::MAX {
        let Some(frame) = whole_frame(&buf[at..], max_frame_size) else {
            break;
        };
        let Some((seq, topic_at)) = plain_publish(frame.header, topic) else {
            break;
        };
        if scan.frames == 0 {
            scan.topic_at = LENGTH_PREFIX_LEN + HEADER_LEN_LEN + topic_at;
        }
        scan.frames += 1;
        scan.len = at + frame.len;
        scan.payload_bytes += frame.payload as u64;
        scan.last_seq = seq;
        at = scan.len;
    }
    scan
}

/// Where the frame starting at `run[at..]` ends, by its length prefix, within `run` (a run
/// holds whole frames, checked when it was made: a length past its end, or a cut prefix, ends
/// at the end).
pub fn frame_end(run: &[u8], at: usize) -> usize {
    match run
        .get(at..)
        .and_then(|b| b.first_chunk::<LENGTH_PREFIX_LEN>())
    {
        Some(prefix) => (at + LENGTH_PREFIX_LEN)
            .saturating_add(u32::from_be_bytes(*prefix) as usize)
            .min(run.len()),
        None => run.len(),
    }
}

/// The bytes of the first `n` frames of a run.
pub fn frames_len(run: &[u8], n: usize) -> usize {
    (0..n).fold(0, |at, _| frame_end(run, at))
}

/// A whole frame at the start of a buffer.
pub(crate) struct Parts<'a> {
    /// Its bytes, length prefix included.
    pub(crate) len: usize,
    /// Its header bytes.
    pub(crate) header: &'a [u8],
    /// Its payload's length.
    pub(crate) payload: usize,
}

/// The frame at the start of `b`, if it is whole, within `max_frame_size`, consistent in its
/// lengths and with a payload smaller than [`DIRECT_PAYLOAD`].
#[inline(always)]
pub(crate) fn whole_frame(b: &[u8], max_frame_size: usize) -> Option<Parts<'_>> {
    let prefix: [u8; LENGTH_PREFIX_LEN] = b.get(..LENGTH_PREFIX_LEN)?.try_into().ok()?;
    let frame_len = u32::from_be_bytes(prefix) as usize;
    if frame_len > max_frame_size || frame_len < HEADER_LEN_LEN {
        return None;
    }
    let body = b.get(LENGTH_PREFIX_LEN..LENGTH_PREFIX_LEN + frame_len)?;
    let header_len = usize::from(u16::from_be_bytes([body[0], body[1]]));
    let header = body.get(HEADER_LEN_LEN..HEADER_LEN_LEN + header_len)?;
    let payload = frame_len - HEADER_LEN_LEN - header_len;
    (payload < DIRECT_PAYLOAD).then_some(Parts {
        len: LENGTH_PREFIX_LEN + frame_len,
        header,
        payload,
    })
}

/// The `seq` of a header that belongs in a run on `topic` (see [`scan_publish_run`]), and where
/// its topic is in it.
#[inline(always)]
fn plain_publish(b: &[u8], topic: &[u8]) -> Option<(u64, usize)> {
    let mut ty = 0;
    let mut seq = 0;
    let mut traceparent = "";
    let mut tracestate = "";
    let mut topic_at = None;
    let mut i = 0;
    while i < b.len() {
        let key = u32::try_from(varint(b, &mut i)?).ok()?;
        let tag = key >> 3;
        match (tag, key & 7) {
            (1, 0) => ty = varint(b, &mut i)?,
            (2, 0) => seq = varint(b, &mut i)?,
            (3 | 12, 0) => {
                varint(b, &mut i)?;
            }
            (4 | 5 | 8 | 9 | 11, 2) => {
                let s = string(b, &mut i)?;
                match tag {
                    5 if s == topic => topic_at = Some(i - s.len()),
                    5 => return None,
                    // Every occurrence is checked, as the decoder does (the last one wins).
                    _ => {
                        let s = std::str::from_utf8(s).ok()?;
                        match tag {
                            8 => traceparent = s,
                            9 => tracestate = s,
                            // The sender (overwritten) and the content type: only checked.
                            _ => {}
                        }
                    }
                }
            }
            // Unknown to this version: skipped, like the decoder does, and relayed as they are.
            (13.., 0) => {
                varint(b, &mut i)?;
            }
            (13.., 1) => i = skip(b, i, 8)?,
            (13.., 2) => {
                let len = varint(b, &mut i)?;
                i = skip(b, i, len)?;
            }
            (13.., 5) => i = skip(b, i, 4)?,
            // The request id, the deadline, an error, tag 0, a wrong wire type, a group.
            _ => return None,
        }
    }
    // As the decoder reads an int32: the varint truncated.
    let topic_at = topic_at.filter(|_| ty as i32 == PUBLISH as i32)?;
    if !(traceparent.is_empty() && tracestate.is_empty()) {
        TraceParent::parse(traceparent)?;
        if !valid_tracestate(tracestate) {
            return None;
        }
    }
    Some((seq, topic_at))
}

/// A length-delimited field's bytes at `*i`.
#[inline(always)]
fn string<'a>(b: &'a [u8], i: &mut usize) -> Option<&'a [u8]> {
    let len = varint(b, i)?;
    let end = skip(b, *i, len)?;
    let s = &b[*i..end];
    *i = end;
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::{self, FrameType};
    use crate::{Frame, FrameCodec, encode_frame};
    use bytes::{Bytes, BytesMut};
    use tokio_util::codec::Encoder;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn publish(topic: &str, seq: u64, payload: usize) -> Frame {
        let mut f = Frame::new(FrameType::Publish, Bytes::from(vec![1u8; payload]));
        f.header.topic = topic.into();
        f.header.seq = seq;
        f
    }

    fn encode(frames: &[Frame]) -> BytesMut {
        let mut buf = BytesMut::new();
        let mut codec = FrameCodec::new(1 << 20);
        for f in frames {
            codec.encode(f, &mut buf).unwrap();
        }
        buf
    }

    #[test]
    fn a_run_ends_at_the_first_frame_it_does_not_take() {
        let mut traced = publish("a.b", 3, 5);
        traced.header.traceparent = TP.into();
        traced.header.tracestate = "k=v".into();
        traced.header.content_type = "text/plain".into();
        let mut frames = vec![publish("a.b", 1, 10), publish("a.b", 2, 0), traced];
        let whole = encode(&frames).len();
        // Each of these ends the run where it stands.
        let mut other_topic = publish("a.c", 4, 1);
        let mut with_id = publish("a.b", 4, 1);
        with_id.header.request_id = 9;
        let mut with_deadline = publish("a.b", 4, 1);
        with_deadline.header.deadline_unix_ms = 9;
        let mut bad_trace = publish("a.b", 4, 1);
        bad_trace.header.traceparent = "00-zz".into();
        let mut state_alone = publish("a.b", 4, 1);
        state_alone.header.tracestate = "k=v".into();
        let mut with_error = publish("a.b", 4, 1);
        with_error.header.error = Some(Box::new(pb::Error::default()));
        let request = {
            let mut f = publish("a.b", 4, 1);
            f.header.set_type(FrameType::Request);
            f
        };
        let big = publish("a.b", 4, DIRECT_PAYLOAD);
        for stop in [
            other_topic.clone(),
            with_id,
            with_deadline,
            bad_trace,
            state_alone,
            with_error,
            request,
            big,
        ] {
            frames.push(stop);
            frames.push(publish("a.b", 5, 1));
            let buf = encode(&frames);
            let scan = scan_publish_run(&buf, b"a.b", usize::MAX, 1 << 20);
            assert_eq!(scan.frames, 3);
            assert_eq!(scan.len, whole);
            assert_eq!(scan.payload_bytes, 15);
            assert_eq!(scan.last_seq, 3);
            assert_eq!(&buf[scan.topic_at..scan.topic_at + 3], b"a.b");
            frames.truncate(3);
        }
        // A limit, a partial frame, a frame over the maximum.
        let buf = encode(&frames);
        assert_eq!(scan_publish_run(&buf, b"a.b", 2, 1 << 20).frames, 2);
        assert_eq!(
            scan_publish_run(&buf[..whole - 1], b"a.b", 9, 1 << 20).frames,
            2
        );
        assert_eq!(scan_publish_run(&buf, b"a.b", 9, 20).frames, 0);
        other_topic.header.topic = "a.b".into();
        assert_eq!(
            scan_publish_run(&encode(&[other_topic]), b"a.b", 9, 1 << 20).frames,
            1
        );
    }

    #[test]
    fn fields_unknown_to_this_version_are_skipped() {
        let mut buf = BytesMut::new();
        let f = publish("t", 7, 3);
        // The header with an unknown varint field (tag 20) and string field (tag 21) appended.
        let mut header = prost::Message::encode_to_vec(&f.header);
        header.extend_from_slice(&[20 << 3, 5, (21 << 3) | 2, 2, b'h', b'i']);
        buf.extend_from_slice(&((2 + header.len() + 3) as u32).to_be_bytes());
        buf.extend_from_slice(&(header.len() as u16).to_be_bytes());
        buf.extend_from_slice(&header);
        buf.extend_from_slice(&[1, 2, 3]);
        let scan = scan_publish_run(&buf, b"t", 9, 1 << 20);
        assert_eq!((scan.frames, scan.len, scan.last_seq), (1, buf.len(), 7));
        // Invalid UTF-8 in the sender goes to the decoder, which refuses it.
        let mut bad = f.clone();
        bad.header.sender = "s".into();
        let mut buf = BytesMut::new();
        encode_frame(&bad.header, &bad.payload, 1 << 20, &mut buf).unwrap();
        let at = buf.iter().position(|&c| c == b's').unwrap();
        buf[at] = 0xff;
        assert_eq!(scan_publish_run(&buf, b"t", 9, 1 << 20).frames, 0);
        // Nor is an invalid first occurrence of a field hidden by a valid last one (found by
        // the fuzzer): the decoder checks each.
        let mut header = prost::Message::encode_to_vec(&f.header);
        header.extend_from_slice(&[(8 << 3) | 2, 2, 0x03, 0x85, (8 << 3) | 2, 0]);
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&((2 + header.len()) as u32).to_be_bytes());
        buf.extend_from_slice(&(header.len() as u16).to_be_bytes());
        buf.extend_from_slice(&header);
        assert!(crate::decode_body(buf.clone().freeze().slice(4..)).is_err());
        assert_eq!(scan_publish_run(&buf, b"t", 9, 1 << 20).frames, 0);
    }
}
