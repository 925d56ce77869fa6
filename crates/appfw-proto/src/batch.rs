//! BATCH frames (capability `batch`): a run of messages on one topic for one subscription,
//! delivered in one frame as their publisher sent them.
//!
//! A relayed message written on its own carries the host's stamps (`seq`, `ack`, `sender`,
//! `subscription_id`): the relay copies and stamps every message for every subscriber, and each
//! message grows by the stamps. A run's messages share all of them but `seq`, so a receiver that
//! takes BATCH frames gets the run's bytes as they were read, behind one header that carries the
//! stamps once: the host writes the same memory to every subscriber. The receiver takes the
//! messages apart with [`unbatch`] (see `docs/PROTOCOL.md`, section 10.6).

use bytes::{Buf, Bytes};

use crate::pb::FrameType;
use crate::run::frame_end;
use crate::{Frame, FrameError, LENGTH_PREFIX_LEN, Str, decode_body};

/// Where the next BATCH frame of a run's payload ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Chunk {
    /// The frames from the start up to this offset fit in the room given (at least one).
    Fits(usize),
    /// The first frame alone does not fit; it ends at this offset.
    TooLarge(usize),
}

/// The whole frames at `body[at..]` that fit in `room` bytes, as many as do. `body` holds whole
/// frames (a run, checked when it was made); a length past its end is cut at the end.
pub(crate) fn next_chunk(body: &[u8], at: usize, room: usize) -> Chunk {
    let mut end = at;
    while end < body.len() {
        let next = frame_end(body, end);
        if next - at > room {
            break;
        }
        end = next;
    }
    if end > at {
        Chunk::Fits(end)
    } else {
        Chunk::TooLarge(frame_end(body, at))
    }
}

/// The messages of a received BATCH frame, in order, each as the PUBLISH frame it stands for:
/// its own header (topic, trace context, content type, payload) with the BATCH header's
/// `sender` and `subscription_id`, and `seq`/`ack` 0 (they belong to the BATCH frame).
///
/// An item is an error, and the last one, when the payload is not a sequence of whole PUBLISH
/// frames on the BATCH frame's topic without a `request_id`: the peer broke the protocol.
pub fn unbatch(batch: &Frame) -> Messages {
    Messages {
        rest: batch.payload.clone(),
        sender: batch.header.sender.clone(),
        topic: batch.header.topic.clone(),
        subscription_id: batch.header.subscription_id,
        failed: false,
    }
}

/// Iterator over a BATCH frame's messages (see [`unbatch`]).
#[derive(Debug)]
pub struct Messages {
    rest: Bytes,
    sender: Str,
    topic: Str,
    subscription_id: u64,
    failed: bool,
}

impl Messages {
    fn fail(&mut self, why: &'static str) -> Option<Result<Frame, FrameError>> {
        self.failed = true;
        Some(Err(FrameError::Batch(why)))
    }
}

impl Iterator for Messages {
    type Item = Result<Frame, FrameError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.rest.is_empty() {
            return None;
        }
        let Some(prefix) = self.rest.first_chunk::<LENGTH_PREFIX_LEN>() else {
            return self.fail("a message's length prefix is cut off");
        };
        let len = u32::from_be_bytes(*prefix) as usize;
        if len > self.rest.len() - LENGTH_PREFIX_LEN {
            return self.fail("a message is longer than the rest of the batch");
        }
        self.rest.advance(LENGTH_PREFIX_LEN);
        let mut frame = match decode_body(self.rest.split_to(len)) {
            Ok(f) => f,
            Err(e) => {
                self.failed = true;
                return Some(Err(e));
            }
        };
        if frame.frame_type() != Some(FrameType::Publish) {
            return self.fail("a message is not a PUBLISH frame");
        }
        if frame.header.topic != self.topic {
            return self.fail("a message's topic is not the batch's");
        }
        if frame.header.request_id != 0 {
            return self.fail("a message carries a request_id");
        }
        frame.header.sender = self.sender.clone();
        frame.header.subscription_id = self.subscription_id;
        frame.header.seq = 0;
        frame.header.ack = 0;
        Some(Ok(frame))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encode_frame;
    use crate::pb::FrameType;
    use bytes::BytesMut;
    use prost::Message as _;

    fn publish(topic: &str, payload: &[u8], sender: &str, sub: u64) -> Frame {
        let mut f = Frame::new(FrameType::Publish, Bytes::copy_from_slice(payload));
        f.header.topic = topic.into();
        f.header.sender = sender.into();
        f.header.subscription_id = sub;
        f.header.seq = 7;
        f
    }

    fn body(frames: &[Frame]) -> Bytes {
        let mut b = BytesMut::new();
        for f in frames {
            encode_frame(&f.header, &f.payload, usize::MAX, &mut b).unwrap();
        }
        b.freeze()
    }

    fn batch(topic: &str, payload: Bytes) -> Frame {
        let mut b = Frame::new(FrameType::Batch, payload);
        b.header.topic = topic.into();
        b.header.sender = "pub".into();
        b.header.subscription_id = 9;
        b
    }

    #[test]
    fn messages_get_the_batch_stamps_over_their_own() {
        let inner = [
            publish("a.b", b"one", "forged", 3),
            publish("a.b", b"two", "", 0),
        ];
        let got: Vec<Frame> = unbatch(&batch("a.b", body(&inner)))
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(got.len(), 2);
        for (g, want) in got.iter().zip([&b"one"[..], b"two"]) {
            assert_eq!(&g.payload[..], want);
            assert_eq!(g.header.sender, "pub");
            assert_eq!(g.header.subscription_id, 9);
            assert_eq!(g.header.topic, "a.b");
            assert_eq!(g.header.seq, 0);
        }
    }

    #[test]
    fn a_malformed_batch_ends_with_one_error() {
        let good = body(&[publish("a.b", b"x", "", 0)]);
        let cases: Vec<(Bytes, &str)> = vec![
            (good.slice(..good.len() - 1), "longer than the rest"),
            (good.slice(..2), "cut off"),
            (body(&[publish("a.c", b"x", "", 0)]), "topic"),
            (
                body(&[Frame::new(FrameType::Request, Bytes::new())]),
                "not a PUBLISH",
            ),
            (
                {
                    let mut f = publish("a.b", b"x", "", 0);
                    f.header.request_id = 4;
                    body(&[f])
                },
                "request_id",
            ),
            (Bytes::from_static(&[0, 0, 0, 3, 0, 9, 1]), "header"),
        ];
        for (payload, why) in cases {
            let mut all = vec![good.clone(), payload];
            let joined: Vec<u8> = all.drain(..).flat_map(|b| b.to_vec()).collect();
            let items: Vec<_> = unbatch(&batch("a.b", Bytes::from(joined))).collect();
            assert_eq!(items.len(), 2, "{why}");
            assert!(items[0].is_ok(), "{why}");
            let err = items[1].as_ref().unwrap_err().to_string();
            assert!(err.contains(why), "{why}: {err}");
        }
    }

    #[test]
    fn chunks_hold_whole_frames_within_the_room() {
        let frames: Vec<Frame> = (0..5)
            .map(|i| publish("t", &[b'x'; 10][..i * 2], "", 0))
            .collect();
        let b = body(&frames);
        let lens: Vec<usize> = frames
            .iter()
            .map(|f| LENGTH_PREFIX_LEN + 2 + f.header.encoded_len() + f.payload.len())
            .collect();
        // Everything fits.
        assert_eq!(next_chunk(&b, 0, usize::MAX), Chunk::Fits(b.len()));
        // Room for the first two but not the third.
        let two = lens[0] + lens[1];
        assert_eq!(next_chunk(&b, 0, two + lens[2] - 1), Chunk::Fits(two));
        assert_eq!(next_chunk(&b, two, lens[2]), Chunk::Fits(two + lens[2]));
        // The first frame alone is too large.
        assert_eq!(next_chunk(&b, 0, lens[0] - 1), Chunk::TooLarge(lens[0]));
    }
}
