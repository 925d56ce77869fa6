//! CPU time of the host's per-message relay path, without the sockets: the reader's codec
//! decodes PUBLISH frames from a buffer, the bus routes them (route cache, outbox), and each
//! subscriber's writer encodes them into its batch and "writes" to a sink (and again with
//! subscribers that take BATCH frames). Single-threaded, so
//! ns per message here is what the bus thread spends on a message besides the syscalls.
//! `cargo bench -p appfw-host --bench relay_path`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use appfw_host::bus::{Bus, Link, RouteCache, Wakes, outbox};
use appfw_host::metrics::Metrics;
use appfw_proto::pb::{self, FrameType};
use appfw_proto::writer::{Sequencer, write_frames};
use appfw_proto::{Frame, FrameCodec};
use bytes::{Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};
use tokio_util::sync::CancellationToken;

/// Messages routed between two yields to the writers (about what one 64 KiB read holds).
const BATCH: usize = 256;

async fn run(size: usize, subs: usize, n: usize, batches: bool) -> f64 {
    let bus = Bus::new(Duration::from_secs(30), Arc::new(Metrics::new(100)));
    let (pub_out, _pub_rx) = outbox::outbox();
    let publisher = Arc::new(Link::new("pub".into(), 1, pub_out));
    let cancel = CancellationToken::new();
    let mut writers = Vec::new();
    for i in 0..subs {
        let (out, mut rx) = outbox::outbox();
        let link = Arc::new(Link::new(format!("sub{i}").into(), 10 + i as u64, out));
        link.batches
            .store(batches, std::sync::atomic::Ordering::Relaxed);
        let sub = pb::Subscribe {
            max_pending: 1024,
            ..Default::default()
        };
        bus.subscribe(&link, 1, "bench.t", &sub).unwrap();
        let c = cancel.clone();
        writers.push(tokio::spawn(async move {
            let _keep = link;
            let mut sink = tokio::io::sink();
            let mut seq = Sequencer::new(0, Arc::new(AtomicU64::new(0)));
            write_frames(&mut sink, &mut rx, &mut seq, 1 << 20, &c, |_, _| {}).await;
        }));
    }
    let mut codec = FrameCodec::default().keeping_wire();
    let mut one = Frame::new(FrameType::Publish, Bytes::from(vec![7u8; size]));
    one.header.topic = "bench.t".into();
    let mut batch = BytesMut::new();
    for i in 0..BATCH {
        one.header.seq = i as u64 + 1;
        codec.encode(&one, &mut batch).unwrap();
    }
    let mut routes = RouteCache::new();
    let mut wakes = Wakes::new();
    let start = Instant::now();
    for _ in 0..n / BATCH {
        // A fresh copy of the batch, as a read would leave it (its cost is counted: a read
        // copies too).
        let mut buf = BytesMut::from(&batch[..]);
        loop {
            // Runs first, as a connection's reader does (the first message of a topic goes
            // through the decoder and caches the route).
            match bus.relay_run(&publisher, &mut buf, 1 << 20, &mut wakes, &routes) {
                Ok(Some(_)) => continue,
                Ok(None) => {}
                Err(blocked) => {
                    bus.relay_run_wait(&publisher, blocked, &mut wakes).await;
                    continue;
                }
            }
            let Some(f) = codec.decode(&mut buf).unwrap() else {
                break;
            };
            // As a connection's reader does: synchronously, no future per message.
            match bus.publish_now(&publisher, f, &mut wakes, &mut routes) {
                Ok(result) => result.unwrap(),
                Err(blocked) => bus
                    .publish_wait(&publisher, blocked, &mut wakes)
                    .await
                    .unwrap(),
            }
        }
        wakes.wake_all();
        tokio::task::yield_now().await;
    }
    cancel.cancel();
    for w in writers {
        w.await.unwrap();
    }
    start.elapsed().as_nanos() as f64 / (n / BATCH * BATCH) as f64
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    println!(
        "| payload | subscribers | ns per published message (median of 5) | subscribers take BATCH frames |"
    );
    println!("|---|---|---|---|");
    for (size, n) in [(64, 2_000_000), (1024, 1_000_000)] {
        for subs in [1, 4] {
            let median = |batches| {
                let mut v: Vec<f64> = (0..5)
                    .map(|_| rt.block_on(run(size, subs, n, batches)))
                    .collect();
                v.sort_by(f64::total_cmp);
                v[2]
            };
            println!(
                "| {size} B | {subs} | {:.0} | {:.0} |",
                median(false),
                median(true)
            );
        }
    }
}
