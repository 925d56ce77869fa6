//! Feeds arbitrary bytes to the run scanner (a relay's check of a read's PUBLISH frames without
//! decoding them): nothing may panic, and every frame it takes must be one the decoder decodes
//! into a PUBLISH on the topic, without a request id, a deadline or an error, and with its seq.
#![no_main]

use appfw_proto::FrameCodec;
use appfw_proto::pb::FrameType;
use appfw_proto::run::scan_publish_run;
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;

fuzz_target!(|data: &[u8]| {
    // The first byte: the topic's length (the topic follows), then the frames.
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = usize::from(n % 16).min(rest.len());
    let (topic, frames) = rest.split_at(n);
    // A relay scans for the topic of a route it made, always valid UTF-8.
    if std::str::from_utf8(topic).is_err() {
        return;
    }
    let scan = scan_publish_run(frames, topic, usize::MAX, 64 * 1024);
    assert!(scan.len <= frames.len());
    let mut buf = BytesMut::from(&frames[..scan.len]);
    let mut codec = FrameCodec::new(64 * 1024).keeping_wire();
    let mut last = 0;
    for _ in 0..scan.frames {
        let f = codec
            .decode(&mut buf)
            .expect("a frame of a run decodes")
            .expect("a run holds whole frames");
        assert_eq!(f.header.r#type(), FrameType::Publish);
        assert_eq!(f.header.topic.as_bytes(), topic);
        assert_eq!(f.header.request_id, 0);
        assert_eq!(f.header.deadline_unix_ms, 0);
        assert!(f.header.error.is_none());
        last = f.header.seq;
    }
    assert!(buf.is_empty(), "the run is exactly its frames");
    assert_eq!(last, scan.last_seq);
    if scan.frames > 0 {
        assert_eq!(&frames[scan.topic_at..scan.topic_at + topic.len()], topic);
    }
});
