//! Feeds arbitrary bytes, in arbitrary chunks, to the frame decoder and every control payload
//! decoder: nothing may panic, and every decoded frame must re-encode and decode to itself.
#![no_main]

use appfw_proto::pb;
use appfw_proto::{Frame, FrameCodec};
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::{Decoder, Encoder};

fuzz_target!(|data: &[u8]| {
    let (split, rest) = match data.split_first() {
        Some((s, r)) => (*s as usize, r),
        None => return,
    };
    let mut codec = FrameCodec::new(64 * 1024);
    let mut buf = BytesMut::new();
    let cut = split.min(rest.len());
    for chunk in [&rest[..cut], &rest[cut..]] {
        buf.extend_from_slice(chunk);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(frame)) => check(&frame),
                Ok(None) | Err(_) => break,
            }
        }
    }
    let _ = codec.decode_eof(&mut buf);
});

fn check(frame: &Frame) {
    let _ = frame.decode_payload::<pb::Hello>();
    let _ = frame.decode_payload::<pb::Welcome>();
    let _ = frame.decode_payload::<pb::Subscribe>();
    let _ = frame.decode_payload::<pb::LogRecord>();
    let _ = frame.decode_payload::<pb::MetricBatch>();
    let _ = frame.decode_payload::<pb::HealthReport>();
    let _ = frame.decode_payload::<pb::Shutdown>();
    let mut codec = FrameCodec::new(64 * 1024);
    let mut out = BytesMut::new();
    if codec.encode(frame, &mut out).is_ok() {
        let again = codec.decode(&mut out).expect("re-encoded frame decodes").expect("complete");
        assert_eq!(&again, frame);
    }
}
