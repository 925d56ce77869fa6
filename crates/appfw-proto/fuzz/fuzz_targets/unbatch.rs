//! Feeds arbitrary bytes to a plugin's reading of a BATCH frame (`appfw_proto::batch::unbatch`):
//! nothing may panic, every message it yields is a PUBLISH on the batch's topic without a
//! request id, stamped with the batch's sender and subscription, and an error ends the messages.
#![no_main]

use appfw_proto::Frame;
use appfw_proto::batch::unbatch;
use appfw_proto::pb::FrameType;
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte: the topic's length (the topic follows), then the payload.
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = usize::from(n % 16).min(rest.len());
    let (topic, payload) = rest.split_at(n);
    let Ok(topic) = std::str::from_utf8(topic) else {
        return;
    };
    let mut batch = Frame::new(FrameType::Batch, Bytes::copy_from_slice(payload));
    batch.header.topic = topic.into();
    batch.header.sender = "pub".into();
    batch.header.subscription_id = 7;
    let mut ended = false;
    let mut bytes = 0;
    for m in unbatch(&batch) {
        assert!(!ended, "nothing follows an error");
        match m {
            Ok(f) => {
                assert_eq!(f.header.r#type(), FrameType::Publish);
                assert_eq!(f.header.topic, topic);
                assert_eq!(f.header.request_id, 0);
                assert_eq!(f.header.sender, "pub");
                assert_eq!(f.header.subscription_id, 7);
                bytes += f.payload.len();
            }
            Err(_) => ended = true,
        }
    }
    assert!(bytes <= payload.len());
});
