//! Heap allocations per relayed message in steady state, counted with a counting global
//! allocator over the real path: the codec decodes a PUBLISH from a read buffer, the bus routes
//! it (snapshot, topic counters, the subscriber's outbox) and the connection writer encodes it
//! into its batch buffer and writes it to a socket. A request/reply round is counted the same
//! way (decode, route, pending table, the server's outbox; decode, reply, the requester's outbox).
//!
//! The goal, and the measurement: zero. Header strings are slices of the read buffer
//! (`appfw_proto::Str`), the sender is a name each connection made once, further subscribers
//! get a header copy that only bumps reference counts, and routing, the outbox (reused deques)
//! and the writer (reused batch buffer) allocate nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed expectation is a failed test

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use appfw_host::bus::{Bus, Link, RouteCache, Wakes, outbox};
use appfw_host::metrics::Metrics;
use appfw_proto::pb::{self, FrameType};
use appfw_proto::writer::{Sequencer, write_frames};
use appfw_proto::{Frame, FrameCodec};
use bytes::{Bytes, BytesMut};
use tokio::io::AsyncReadExt;
use tokio_util::codec::{Decoder, Encoder};
use tokio_util::sync::CancellationToken;

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocs() -> u64 {
    ALLOCS.load(Ordering::Relaxed)
}

/// How the reader hands the messages to the bus.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Path {
    /// Decoded one by one, plain or with a `traceparent`.
    Frames { traced: bool },
    /// As runs (`Bus::relay_run`), after the first message cached the route; with `batches`
    /// to subscribers that take BATCH frames.
    Runs { batches: bool },
}

/// Allocations per message for `n` messages relayed to `subscribers` subscribers:
/// (decode, route, total with the writers). For runs, a run's routing counts as routing.
async fn measure(subscribers: usize, n: usize, path: Path) -> (f64, f64, f64) {
    let traced = path == Path::Frames { traced: true };
    let bus = Bus::new(Duration::from_secs(30), Arc::new(Metrics::new(100)));
    let (pub_out, _pub_rx) = outbox::outbox();
    let publisher = Arc::new(Link::new("pub".into(), 1, pub_out));
    let cancel = CancellationToken::new();
    let mut tasks = Vec::new();
    let received = Arc::new(AtomicU64::new(0));
    for i in 0..subscribers {
        let (out, mut rx) = outbox::outbox();
        let link = Arc::new(Link::new(format!("sub{i}").into(), 10 + i as u64, out));
        link.batches
            .store(path == (Path::Runs { batches: true }), Ordering::Relaxed);
        bus.subscribe(&link, 1, "bench.t", &pb::Subscribe::default())
            .unwrap();
        let (mut a, mut b) = tokio::net::UnixStream::pair().unwrap();
        let c = cancel.clone();
        tasks.push(tokio::spawn(async move {
            let _keep = link;
            let mut seq = Sequencer::new(0, Arc::new(AtomicU64::new(0)));
            write_frames(&mut a, &mut rx, &mut seq, 1 << 20, &c, |_, _| {}).await;
        }));
        let got = Arc::clone(&received);
        tasks.push(tokio::spawn(async move {
            let mut buf = vec![0u8; 1 << 16];
            while let Ok(k) = b.read(&mut buf).await {
                if k == 0 {
                    break;
                }
                got.fetch_add(k as u64, Ordering::Relaxed);
            }
        }));
    }
    // What the publisher's connection would read: n + warm-up PUBLISH frames, encoded before
    // counting.
    let warm = 10_000;
    // The host's codec (keeps the received header bytes) and a reader's route cache.
    let mut codec = FrameCodec::default().keeping_wire();
    let mut routes = RouteCache::new();
    let mut wire = BytesMut::new();
    let mut one = Frame::new(FrameType::Publish, Bytes::from(vec![7u8; 64]));
    one.header.topic = "bench.t".into();
    if traced {
        one.header.traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into();
    }
    for _ in 0..n + warm {
        codec.encode(&one, &mut wire).unwrap();
    }
    let mut out_len = BytesMut::new();
    codec.encode(&one, &mut out_len).unwrap();
    let per_frame_out = out_len.len() as u64 + 8; // + seq and ack as the writer stamps them
    let (mut decode, mut route) = (0u64, 0u64);
    let mut i = 0;
    let mut wakes = Wakes::new();
    while matches!(path, Path::Runs { .. }) && i < n + warm {
        let a0 = allocs();
        let before = wire.len();
        let taken = match bus.relay_run(&publisher, &mut wire, 1 << 20, &mut wakes, &routes) {
            Ok(Some(_)) => true,
            Ok(None) => false,
            Err(blocked) => {
                bus.relay_run_wait(&publisher, blocked, &mut wakes).await;
                true
            }
        };
        wakes.wake_all();
        if !taken && i == 0 {
            // The first message decodes and caches the route.
            let frame = codec.decode(&mut wire).unwrap().unwrap();
            bus.publish_batched(&publisher, frame, &mut wakes, &mut routes)
                .await
                .unwrap();
        }
        let a1 = allocs();
        let frames = (before - wire.len()) / out_len.len();
        if i >= warm {
            route += a1 - a0;
        }
        i += frames;
        // The writers take what is queued (no room: nothing was taken, try again after them).
        tokio::task::yield_now().await;
    }
    while matches!(path, Path::Frames { .. }) && i < n + warm {
        let a0 = allocs();
        let frame = codec.decode(&mut wire).unwrap().unwrap();
        let a1 = allocs();
        bus.publish_batched(&publisher, frame, &mut Wakes::new(), &mut routes)
            .await
            .unwrap();
        let a2 = allocs();
        if i >= warm {
            decode += a1 - a0;
            route += a2 - a1;
        }
        if i == warm - 1 {
            // Let the writers catch up, then start counting from a quiet state.
            while received.load(Ordering::Relaxed)
                < per_frame_out.saturating_sub(16) * warm as u64 * subscribers as u64 / 2
            {
                tokio::task::yield_now().await;
            }
        }
        if i % 512 == 0 {
            tokio::task::yield_now().await;
        }
        i += 1;
    }
    let before_drain = allocs();
    // Everything written: each subscriber's socket got every frame.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let min_bytes = (n + warm) as u64 * subscribers as u64 * (per_frame_out - 16);
    while received.load(Ordering::Relaxed) < min_bytes {
        assert!(
            tokio::time::Instant::now() < deadline,
            "frames were not written"
        );
        tokio::task::yield_now().await;
    }
    let drain = allocs() - before_drain;
    cancel.cancel();
    for t in tasks {
        t.abort();
        let _ = t.await;
    }
    let n = n as f64;
    (
        decode as f64 / n,
        route as f64 / n,
        (decode + route + drain) as f64 / n,
    )
}

/// Allocations over `n` request/reply rounds (after a warm-up): the requester's REQUEST and the
/// server's REPLY are decoded from wire bytes, routed by the bus, and taken from the outboxes.
/// Only the test's own encoding of each reply (with the id the host assigned) is not counted.
async fn measure_rr(n: usize) -> u64 {
    let bus = Bus::new(Duration::from_secs(30), Arc::new(Metrics::new(100)));
    let (a_out, mut a_rx) = outbox::outbox();
    let requester = Arc::new(Link::new("client".into(), 1, a_out));
    let (b_out, mut b_rx) = outbox::outbox();
    let server = Arc::new(Link::new("server".into(), 2, b_out));
    let serve = pb::Subscribe {
        kind: pb::SubscriptionKind::Requests as i32,
        ..Default::default()
    };
    bus.subscribe(&server, 1, "bench.rr", &serve).unwrap();
    let warm = 1000;
    let mut codec = FrameCodec::default().keeping_wire();
    let mut requests = BytesMut::new();
    for i in 0..n + warm {
        let mut f = Frame::new(FrameType::Request, Bytes::from(vec![7u8; 64]));
        f.header.topic = "bench.rr".into();
        f.header.request_id = i as u64 + 1;
        codec.encode(&f, &mut requests).unwrap();
    }
    let mut reply = Frame::new(FrameType::Reply, Bytes::from(vec![8u8; 64]));
    let mut replies = BytesMut::with_capacity(1 << 16);
    let mut counted = 0u64;
    for i in 0..n + warm {
        let a0 = allocs();
        let req = codec.decode(&mut requests).unwrap().unwrap();
        bus.request(&requester, req).await;
        let delivered = b_rx.try_recv().expect("the request reached the server");
        let host_id = delivered.header.request_id;
        drop(delivered);
        let a1 = allocs();
        reply.header.request_id = host_id;
        codec.encode(&reply, &mut replies).unwrap();
        let a2 = allocs();
        let rep = codec.decode(&mut replies).unwrap().unwrap();
        bus.reply(&server, rep).await;
        let answer = a_rx.try_recv().expect("the reply reached the requester");
        assert_eq!(answer.header.request_id, i as u64 + 1);
        assert!(answer.header.error.is_none());
        drop(answer);
        let a3 = allocs();
        if i >= warm {
            counted += (a1 - a0) + (a3 - a2);
        }
    }
    assert_eq!(bus.pending_requests(), 0);
    counted
}

#[test]
fn allocations_per_relayed_message_in_steady_state() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let n = 50_000;
        for (subs, path) in [
            (1, Path::Frames { traced: false }),
            (4, Path::Frames { traced: false }),
            (1, Path::Frames { traced: true }),
            (1, Path::Runs { batches: false }),
            (4, Path::Runs { batches: false }),
            (1, Path::Runs { batches: true }),
            (4, Path::Runs { batches: true }),
        ] {
            let (decode, route, total) = measure(subs, n, path).await;
            eprintln!(
                "1 -> {subs} ({path:?}): allocations per message: decode {decode:.4}, routing {route:.4}, total {total:.4}"
            );
            assert!(
                total == 0.0,
                "1 -> {subs} ({path:?}): {total} allocations per message, want 0 \
                 (decode {decode}, routing {route})"
            );
        }
        let rr = measure_rr(n).await;
        eprintln!("request/reply: {rr} allocations in {n} rounds");
        assert_eq!(rr, 0, "request/reply: allocations in {n} rounds, want 0");
    });
}
