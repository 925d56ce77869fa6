//! The SDK against a scripted host on the other end of a socket pair.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed expectation is a failed test

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use appfw_proto::pb::{self, ErrorKind, FrameType, SubscriptionKind};
use appfw_proto::{Frame, FrameCodec, now_unix_ms};
use appfw_sdk::{Bytes, Plugin, RequestError, SdkError};
use futures_util::{SinkExt, StreamExt};
use tokio::net::UnixStream;
use tokio_util::codec::Framed;

type Host = Framed<UnixStream, FrameCodec>;

const T: Duration = Duration::from_secs(10);

async fn recv(host: &mut Host) -> Frame {
    tokio::time::timeout(T, host.next())
        .await
        .expect("a frame in time")
        .expect("open")
        .expect("valid")
}

/// Receives frames until one of type `ty` (skipping e.g. health/log frames).
async fn recv_type(host: &mut Host, ty: FrameType) -> Frame {
    loop {
        let f = recv(host).await;
        if f.frame_type() == Some(ty) {
            return f;
        }
    }
}

/// Connects a plugin to a scripted host that accepts the handshake.
async fn connect(builder: appfw_sdk::PluginBuilder) -> (Plugin, Host) {
    let (a, b) = UnixStream::pair().unwrap();
    let mut host = Framed::new(b, FrameCodec::default());
    let plugin = tokio::spawn(builder.stream(a).handle_sigterm(false).connect());
    let hello = recv(&mut host).await;
    assert_eq!(hello.frame_type(), Some(FrameType::Hello));
    assert_eq!(hello.header.seq, 1);
    let h: pb::Hello = hello.decode_payload().unwrap();
    assert_eq!((h.min_version, h.max_version), (1, 1));
    let welcome = pb::Welcome {
        version: 1,
        capabilities: h.capabilities,
        plugin_name: "test".into(),
        heartbeat_interval_ms: 1000,
        heartbeat_timeout_ms: 5000,
        max_frame_size: 1 << 20,
        ..Default::default()
    };
    host.send(Frame::control(FrameType::Welcome, &welcome))
        .await
        .unwrap();
    (plugin.await.unwrap().unwrap(), host)
}

/// Serves `topic` on the plugin, acknowledging the SUBSCRIBE; returns the subscription id.
async fn serve_ack(host: &mut Host) -> u64 {
    let sub = recv_type(host, FrameType::Subscribe).await;
    let s: pb::Subscribe = sub.decode_payload().unwrap();
    assert_eq!(s.kind, SubscriptionKind::Requests as i32);
    let mut ack = Frame::new(FrameType::Reply, Bytes::new());
    ack.header.request_id = sub.header.request_id;
    host.send(ack).await.unwrap();
    sub.header.request_id
}

fn request(sub: u64, id: u64, payload: &'static [u8], deadline_ms: u64) -> Frame {
    let mut f = Frame::new(FrameType::Request, Bytes::from_static(payload));
    f.header.topic = "svc".into();
    f.header.request_id = id;
    f.header.subscription_id = sub;
    f.header.deadline_unix_ms = deadline_ms;
    f.header.sender = "caller".into();
    f
}

#[tokio::test]
async fn pings_are_answered_with_the_same_id_and_sequence_numbers_increase() {
    let (_plugin, mut host) = connect(Plugin::builder()).await;
    for nonce in [42u64, 43] {
        let mut ping = Frame::new(FrameType::Ping, Bytes::new());
        ping.header.request_id = nonce;
        ping.header.seq = nonce;
        host.send(ping).await.unwrap();
        let pong = recv_type(&mut host, FrameType::Pong).await;
        assert_eq!(pong.header.request_id, nonce);
        assert!(pong.header.seq >= 2, "HELLO was 1");
        assert_eq!(pong.header.ack, nonce, "ack carries the host's last seq");
    }
}

#[tokio::test]
async fn a_panicking_handler_becomes_a_critical_error_reply_and_the_plugin_lives_on() {
    let (plugin, mut host) = connect(Plugin::builder()).await;
    let p = plugin.clone();
    let serving = tokio::spawn(async move {
        p.serve("svc", |req| async move {
            if &req.payload[..] == b"boom" {
                panic!("kaboom");
            }
            Ok(req.payload)
        })
        .await
    });
    let sub = serve_ack(&mut host).await;
    serving.await.unwrap().unwrap();
    host.send(request(sub, 1, b"boom", 0)).await.unwrap();
    let r = recv_type(&mut host, FrameType::Reply).await;
    assert_eq!(r.header.request_id, 1);
    let e = r.header.error.unwrap();
    assert_eq!(e.kind, ErrorKind::Critical as i32);
    assert_eq!(e.code, "handler_panicked");
    assert!(e.message.contains("kaboom"), "{}", e.message);
    host.send(request(sub, 2, b"fine", 0)).await.unwrap();
    let r = recv_type(&mut host, FrameType::Reply).await;
    assert_eq!(r.header.request_id, 2);
    assert!(r.header.error.is_none());
    assert_eq!(&r.payload[..], b"fine");
}

#[tokio::test]
async fn expired_work_is_not_started() {
    let (plugin, mut host) = connect(Plugin::builder()).await;
    let ran = Arc::new(AtomicBool::new(false));
    let (p, r2) = (plugin.clone(), Arc::clone(&ran));
    let serving = tokio::spawn(async move {
        p.serve("svc", move |req| {
            let ran = Arc::clone(&r2);
            async move {
                ran.store(true, Ordering::SeqCst);
                Ok(req.payload)
            }
        })
        .await
    });
    let sub = serve_ack(&mut host).await;
    serving.await.unwrap().unwrap();
    host.send(request(sub, 9, b"late", now_unix_ms() - 1000))
        .await
        .unwrap();
    let r = recv_type(&mut host, FrameType::Reply).await;
    assert_eq!(r.header.error.unwrap().code, "deadline_exceeded");
    assert!(!ran.load(Ordering::SeqCst), "the handler must not run");
}

#[tokio::test]
async fn requests_beyond_the_in_flight_limit_are_shed() {
    let (plugin, mut host) = connect(Plugin::builder().max_in_flight(1)).await;
    let gate = Arc::new(tokio::sync::Notify::new());
    let (p, g) = (plugin.clone(), Arc::clone(&gate));
    let serving = tokio::spawn(async move {
        p.serve("svc", move |req| {
            let g = Arc::clone(&g);
            async move {
                g.notified().await;
                Ok(req.payload)
            }
        })
        .await
    });
    let sub = serve_ack(&mut host).await;
    serving.await.unwrap().unwrap();
    host.send(request(sub, 1, b"a", 0)).await.unwrap();
    host.send(request(sub, 2, b"b", 0)).await.unwrap();
    let r = recv_type(&mut host, FrameType::Reply).await;
    assert_eq!(r.header.request_id, 2);
    let e = r.header.error.unwrap();
    assert_eq!(
        (e.kind, e.code.as_str()),
        (ErrorKind::Temporary as i32, "overloaded")
    );
    gate.notify_one();
    let r = recv_type(&mut host, FrameType::Reply).await;
    assert_eq!(r.header.request_id, 1);
    assert!(r.header.error.is_none());
}

#[tokio::test]
async fn requests_get_replies_and_typed_errors() {
    let (plugin, mut host) = connect(Plugin::builder()).await;
    let p = plugin.clone();
    let call = tokio::spawn(async move { p.request("svc", "q", Duration::from_secs(5)).await });
    let req = recv_type(&mut host, FrameType::Request).await;
    assert_eq!(req.header.topic, "svc");
    assert!(req.header.deadline_unix_ms > now_unix_ms());
    let mut rep = Frame::new(FrameType::Reply, Bytes::from_static(b"answer"));
    rep.header.request_id = req.header.request_id;
    host.send(rep).await.unwrap();
    assert_eq!(&call.await.unwrap().unwrap()[..], b"answer");

    let p = plugin.clone();
    let call = tokio::spawn(async move { p.request("svc", "q", Duration::from_secs(5)).await });
    let req = recv_type(&mut host, FrameType::Request).await;
    let mut rep = Frame::new(FrameType::Reply, Bytes::new());
    rep.header.request_id = req.header.request_id;
    rep.header.error = Some(Box::new(pb::Error {
        kind: ErrorKind::Temporary as i32,
        code: "no_responders".into(),
        message: "nobody".into(),
    }));
    host.send(rep).await.unwrap();
    let err: RequestError = call.await.unwrap().unwrap_err();
    assert!(err.is_temporary());
    assert_eq!(err.code, "no_responders");
}

#[tokio::test]
async fn shutdown_frame_drains_in_flight_work_then_says_goodbye() {
    let (plugin, mut host) = connect(Plugin::builder()).await;
    let p = plugin.clone();
    let serving = tokio::spawn(async move {
        p.serve("svc", |req| async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            Ok(req.payload)
        })
        .await
    });
    let sub = serve_ack(&mut host).await;
    serving.await.unwrap().unwrap();
    host.send(request(sub, 5, b"slow", 0)).await.unwrap();
    let run = tokio::spawn({
        let p = plugin.clone();
        async move { p.run_until_shutdown().await }
    });
    let shutdown = pb::Shutdown {
        grace_ms: 5000,
        reason: "test".into(),
    };
    host.send(Frame::control(FrameType::Shutdown, &shutdown))
        .await
        .unwrap();
    let reply = recv_type(&mut host, FrameType::Reply).await;
    assert_eq!(reply.header.request_id, 5, "in-flight work finishes first");
    assert_eq!(&reply.payload[..], b"slow");
    let bye = recv_type(&mut host, FrameType::Goodbye).await;
    assert!(bye.decode_payload::<pb::Goodbye>().is_ok());
    tokio::time::timeout(T, run)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn a_refusal_is_reported_with_its_reason() {
    let (a, b) = UnixStream::pair().unwrap();
    let mut host = Framed::new(b, FrameCodec::default());
    let plugin = tokio::spawn(
        Plugin::builder()
            .stream(a)
            .protocol_versions(2, 3)
            .connect(),
    );
    let hello = recv(&mut host).await;
    let h: pb::Hello = hello.decode_payload().unwrap();
    assert_eq!((h.min_version, h.max_version), (2, 3));
    let refuse = pb::Refuse {
        reason: "protocol version mismatch: plugin speaks 2-3, host speaks 1-1".into(),
        ..Default::default()
    };
    host.send(Frame::control(FrameType::Refuse, &refuse))
        .await
        .unwrap();
    match plugin.await.unwrap() {
        Err(SdkError::Refused(r)) => assert!(r.contains("plugin speaks 2-3, host speaks 1-1")),
        other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
    }
}

#[tokio::test]
async fn host_closing_the_socket_ends_the_plugin() {
    let (plugin, host) = connect(Plugin::builder()).await;
    drop(host);
    tokio::time::timeout(T, plugin.shutdown_requested())
        .await
        .unwrap();
    assert!(matches!(
        plugin.run_until_shutdown().await,
        Err(SdkError::Closed)
    ));
}

#[tokio::test]
async fn subscribe_options_reach_the_host_and_confirmed_publishes_report_slow_subscribers() {
    use appfw_sdk::{Overflow, SubscribeOptions};
    let (plugin, mut host) = connect(Plugin::builder()).await;
    let p = plugin.clone();
    let sub = tokio::spawn(async move {
        let opts = SubscribeOptions::overflow(Overflow::DropOldest)
            .max_pending(16)
            .block_timeout(Duration::from_millis(250));
        p.subscribe_with("prices.>", opts, |_| async {}).await
    });
    let f = recv_type(&mut host, FrameType::Subscribe).await;
    let s: pb::Subscribe = f.decode_payload().unwrap();
    assert_eq!(s.overflow, pb::OverflowPolicy::DropOldest as i32);
    assert_eq!((s.max_pending, s.block_timeout_ms), (16, 250));
    let mut ack = Frame::new(FrameType::Reply, Bytes::new());
    ack.header.request_id = f.header.request_id;
    host.send(ack).await.unwrap();
    sub.await.unwrap().unwrap();

    assert!(plugin.has_capability(appfw_proto::caps::PUBLISH_ACK));
    let p = plugin.clone();
    let call = tokio::spawn(async move {
        p.publish_confirmed("prices.eu", "1", Duration::from_secs(5))
            .await
    });
    let f = recv_type(&mut host, FrameType::Publish).await;
    assert_ne!(f.header.request_id, 0, "a receipt is asked for");
    assert!(f.header.deadline_unix_ms > now_unix_ms());
    let mut rep = Frame::new(FrameType::Reply, Bytes::new());
    rep.header.request_id = f.header.request_id;
    rep.header.error = Some(Box::new(pb::Error {
        kind: ErrorKind::Temporary as i32,
        code: "slow_subscriber".into(),
        message: "1 subscriber(s) had no room".into(),
    }));
    host.send(rep).await.unwrap();
    let err = call.await.unwrap().unwrap_err();
    assert_eq!(err.code, "slow_subscriber");
    assert!(err.is_temporary());
}

#[tokio::test]
async fn handlers_continue_the_senders_trace_and_sends_outside_start_one() {
    let (plugin, mut host) = connect(Plugin::builder()).await;
    let p = plugin.clone();
    let serving = tokio::spawn(async move {
        let inner = p.clone();
        p.serve("svc", move |req| {
            let p = inner.clone();
            async move {
                let t = req.trace.clone().expect("handlers get a context");
                assert_eq!(appfw_sdk::TraceContext::current().as_ref(), Some(&t));
                p.publish("audit", "seen").await.unwrap();
                let parent = t
                    .parent_span_id
                    .map(|s| s.iter().map(|b| format!("{b:02x}")).collect::<String>());
                Ok(format!(
                    "{} {} {}",
                    t.trace_id_hex(),
                    t.span_id_hex(),
                    parent.unwrap_or_default()
                )
                .into())
            }
        })
        .await
    });
    let sub = serve_ack(&mut host).await;
    serving.await.unwrap().unwrap();
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let mut req = request(sub, 5, b"x", now_unix_ms() + 5000);
    req.header.traceparent = tp.into();
    req.header.tracestate = "congo=t61rcWkgMzE".into();
    host.send(req).await.unwrap();
    let published = recv_type(&mut host, FrameType::Publish).await;
    let out = appfw_proto::trace::TraceParent::parse(&published.header.traceparent)
        .expect("a valid traceparent");
    assert_eq!(published.header.tracestate, "congo=t61rcWkgMzE");
    let reply = recv_type(&mut host, FrameType::Reply).await;
    let text = String::from_utf8(reply.payload.to_vec()).unwrap();
    let parts: Vec<&str> = text.split(' ').collect();
    assert_eq!(parts[0], "4bf92f3577b34da6a3ce929d0e0e4736", "same trace");
    assert_eq!(
        parts[2], "00f067aa0ba902b7",
        "the handler's parent is the sender's span"
    );
    assert_ne!(parts[1], parts[2], "the handler has a span of its own");
    let hex = |b: &[u8]| b.iter().map(|b| format!("{b:02x}")).collect::<String>();
    assert_eq!(
        hex(&out.trace_id),
        parts[0],
        "what the handler sends keeps the trace"
    );
    assert_ne!(hex(&out.parent_id), parts[1], "with a new span id");
    assert_ne!(hex(&out.parent_id), parts[2]);

    // Outside any handler: a new trace.
    plugin.publish("free", "x").await.unwrap();
    let f = recv_type(&mut host, FrameType::Publish).await;
    let t = appfw_proto::trace::TraceParent::parse(&f.header.traceparent).unwrap();
    assert_ne!(hex(&t.trace_id), parts[0]);
}

/// Answers the next REQUEST the plugin sends with `error` (or the payload `ok` when `None`).
async fn answer(host: &mut Host, error: Option<&str>) -> Frame {
    let req = recv_type(host, FrameType::Request).await;
    let mut rep = Frame::new(FrameType::Reply, Bytes::from_static(b"ok"));
    rep.header.request_id = req.header.request_id;
    rep.header.error = error.map(|code| {
        Box::new(pb::Error {
            kind: ErrorKind::Temporary as i32,
            code: code.into(),
            message: "try later".into(),
        })
    });
    host.send(rep).await.unwrap();
    req
}

fn sample(plugin: &Plugin, name: &str) -> Option<f64> {
    plugin
        .metrics()
        .snapshot()
        .samples
        .into_iter()
        .find(|s| s.name == name)
        .map(|s| s.value)
}

#[tokio::test]
async fn temporary_errors_are_retried_within_the_deadline_and_a_failing_destination_opens_its_circuit()
 {
    use appfw_sdk::RequestOptions;
    use appfw_sdk::resilience::{BreakerConfig, RetryPolicy};
    let breaker = BreakerConfig {
        failure_threshold: 3,
        open_for: Duration::from_millis(100),
        half_open_probes: 1,
    };
    let (plugin, mut host) = connect(Plugin::builder().circuit_breaker(breaker)).await;
    let retry = RetryPolicy {
        max_attempts: 5,
        initial_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(20),
        multiplier: 2.0,
    };
    // Two temporary failures, then an answer: the caller sees the answer.
    let p = plugin.clone();
    let opts = RequestOptions::new(Duration::from_secs(5)).retry(retry.clone());
    let call = tokio::spawn(async move { p.request_with("svc", "q", &opts).await });
    answer(&mut host, Some("overloaded")).await;
    answer(&mut host, Some("no_responders")).await;
    answer(&mut host, None).await;
    assert_eq!(&call.await.unwrap().unwrap().payload[..], b"ok");
    assert_eq!(sample(&plugin, "sdk_request_retries"), Some(2.0));

    // Permanent errors are not retried.
    let p = plugin.clone();
    let opts = RequestOptions::new(Duration::from_secs(5)).retry(retry.clone());
    let call = tokio::spawn(async move { p.request_with("svc", "q", &opts).await });
    let req = recv_type(&mut host, FrameType::Request).await;
    let mut rep = Frame::new(FrameType::Reply, Bytes::new());
    rep.header.request_id = req.header.request_id;
    rep.header.error = Some(Box::new(pb::Error {
        kind: ErrorKind::Permanent as i32,
        code: "bad_request".into(),
        message: "no".into(),
    }));
    host.send(rep).await.unwrap();
    assert_eq!(call.await.unwrap().unwrap_err().code, "bad_request");

    // Three failures in a row (no retries) open the circuit: the next call fails at once.
    let once = RequestOptions::new(Duration::from_secs(5));
    for _ in 0..3 {
        let p = plugin.clone();
        let o = once.clone();
        let call = tokio::spawn(async move { p.request_with("svc", "q", &o).await });
        answer(&mut host, Some("overloaded")).await;
        assert_eq!(call.await.unwrap().unwrap_err().code, "overloaded");
    }
    let e = plugin.request_with("svc", "q", &once).await.unwrap_err();
    assert_eq!(e.code, "circuit_open");
    assert_eq!(sample(&plugin, "sdk_circuit_breaker_state"), Some(1.0));
    assert_eq!(sample(&plugin, "sdk_circuit_breaker_opened"), Some(1.0));
    // Retries stop at the caller's deadline rather than waiting for the circuit.
    let short = RequestOptions::new(Duration::from_millis(30)).retry(retry);
    let e = plugin.request_with("svc", "q", &short).await.unwrap_err();
    assert!(e.is_temporary(), "{e}");

    // After the open period one probe goes through; its success closes the circuit.
    let p = plugin.clone();
    let prober = tokio::spawn(async move {
        let until = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            match p.request_with("svc", "probe", &once).await {
                Err(e) if e.code == "circuit_open" && tokio::time::Instant::now() < until => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                other => return other,
            }
        }
    });
    let probe = answer(&mut host, None).await;
    assert_eq!(&probe.payload[..], b"probe");
    assert!(prober.await.unwrap().is_ok());
    assert_eq!(sample(&plugin, "sdk_circuit_breaker_state"), Some(0.0));
}

#[tokio::test]
async fn slow_handlers_lower_the_in_flight_limit_and_requests_over_it_are_shed() {
    let (plugin, mut host) = connect(
        Plugin::builder()
            .max_in_flight(4)
            .latency_target(Duration::from_millis(1), 1),
    )
    .await;
    let (release_tx, release_rx) = tokio::sync::watch::channel(false);
    let p = plugin.clone();
    let serving = tokio::spawn(async move {
        p.serve("svc", move |req| {
            let mut release = release_rx.clone();
            async move {
                // Work well over the 1 ms target, then wait for the test (at most 10 s).
                tokio::time::sleep(Duration::from_millis(5)).await;
                let _ = tokio::time::timeout(T, release.wait_for(|r| *r)).await;
                Ok(req.payload)
            }
        })
        .await
    });
    let sub = serve_ack(&mut host).await;
    serving.await.unwrap().unwrap();
    release_tx.send(true).unwrap();
    // Handlers slower than the target, one at a time: 4 -> 3 -> 2 -> 1.
    for id in 1..=3 {
        host.send(request(sub, id, b"x", now_unix_ms() + 10_000))
            .await
            .unwrap();
        let r = recv_type(&mut host, FrameType::Reply).await;
        assert!(r.header.error.is_none());
    }
    release_tx.send(false).unwrap();
    host.send(request(sub, 10, b"held", now_unix_ms() + 10_000))
        .await
        .unwrap();
    host.send(request(sub, 11, b"shed", now_unix_ms() + 10_000))
        .await
        .unwrap();
    let r = recv_type(&mut host, FrameType::Reply).await;
    assert_eq!(r.header.request_id, 11);
    assert_eq!(r.header.error.unwrap().code, "overloaded");
    assert_eq!(sample(&plugin, "sdk_requests_shed"), Some(1.0));
    assert_eq!(sample(&plugin, "sdk_in_flight_limit"), Some(1.0));
    release_tx.send(true).unwrap();
    let r = recv_type(&mut host, FrameType::Reply).await;
    assert_eq!(r.header.request_id, 10);
}

#[tokio::test]
async fn gather_returns_every_reply_in_order_and_deadline_exceeded_for_the_missing_ones() {
    let (plugin, mut host) = connect(Plugin::builder()).await;
    let p = plugin.clone();
    let call = tokio::spawn(async move {
        appfw_sdk::patterns::gather(
            &p,
            [("a".to_string(), "1"), ("b".to_string(), "2")],
            Duration::from_millis(200),
        )
        .await
    });
    // Both requests are out before any reply: fan-out.
    let first = recv_type(&mut host, FrameType::Request).await;
    let second = recv_type(&mut host, FrameType::Request).await;
    let b = if first.header.topic == "b" {
        first
    } else {
        second
    };
    let mut rep = Frame::new(FrameType::Reply, Bytes::from_static(b"two"));
    rep.header.request_id = b.header.request_id;
    host.send(rep).await.unwrap();
    let got = call.await.unwrap();
    assert_eq!(got[0].as_ref().unwrap_err().code, "deadline_exceeded");
    assert_eq!(&got[1].as_ref().unwrap()[..], b"two");
}

/// Subscribes to `feed` with events, acknowledged; the subscription id.
async fn subscribe_feed(
    plugin: &Plugin,
    host: &mut Host,
    seen: tokio::sync::mpsc::Sender<appfw_sdk::Message>,
) -> u64 {
    let p = plugin.clone();
    let sub = tokio::spawn(async move {
        p.subscribe("feed", move |m| {
            let seen = seen.clone();
            async move {
                let _ = seen.send(m).await;
            }
        })
        .await
    });
    let f = recv_type(host, FrameType::Subscribe).await;
    let mut ack = Frame::new(FrameType::Reply, Bytes::new());
    ack.header.request_id = f.header.request_id;
    host.send(ack).await.unwrap();
    sub.await.unwrap().unwrap();
    f.header.request_id
}

/// A BATCH frame from `pub` for subscription `sub` on `feed` holding `messages` as encoded.
fn batch(sub: u64, messages: &[Frame]) -> Frame {
    let mut body = bytes::BytesMut::new();
    for m in messages {
        appfw_proto::encode_frame(&m.header, &m.payload, 1 << 20, &mut body).unwrap();
    }
    let mut b = Frame::new(FrameType::Batch, body.freeze());
    b.header.topic = "feed".into();
    b.header.sender = "pub".into();
    b.header.subscription_id = sub;
    b
}

fn feed(payload: &'static [u8]) -> Frame {
    let mut f = Frame::new(FrameType::Publish, Bytes::from_static(payload));
    f.header.topic = "feed".into();
    f.header.seq = 99;
    f
}

#[tokio::test]
async fn a_batch_is_handled_message_by_message_with_its_stamps() {
    let (plugin, mut host) = connect(Plugin::builder()).await;
    assert!(
        plugin.has_capability(appfw_proto::caps::BATCH),
        "claimed by default"
    );
    let (tx, mut rx) = tokio::sync::mpsc::channel(8);
    let sub = subscribe_feed(&plugin, &mut host, tx).await;
    let mut forged = feed(b"two");
    forged.header.sender = "someone-else".into();
    forged.header.traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into();
    forged.header.content_type = "text/plain".into();
    host.send(batch(sub, &[feed(b"one"), forged, feed(b"three")]))
        .await
        .unwrap();
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(tokio::time::timeout(T, rx.recv()).await.unwrap().unwrap());
    }
    got.sort_by(|a, b| a.payload.cmp(&b.payload));
    let payloads: Vec<&[u8]> = got.iter().map(|m| &m.payload[..]).collect();
    assert_eq!(payloads, [&b"one"[..], b"three", b"two"]);
    for m in &got {
        assert_eq!(
            m.sender, "pub",
            "the batch's sender, not the one written inside"
        );
        assert_eq!(m.topic, "feed");
    }
    let two = &got[2];
    assert_eq!(two.content_type, "text/plain");
    assert_eq!(
        two.trace.as_ref().map(|t| t.trace_id_hex()),
        Some("4bf92f3577b34da6a3ce929d0e0e4736".to_string())
    );
}

#[tokio::test]
async fn a_malformed_batch_closes_the_connection_and_batches_can_be_refused() {
    let (plugin, mut host) = connect(Plugin::builder()).await;
    let (tx, mut rx) = tokio::sync::mpsc::channel(8);
    let sub = subscribe_feed(&plugin, &mut host, tx).await;
    // A message on another topic inside: the host broke the protocol.
    let mut other = feed(b"x");
    other.header.topic = "other".into();
    host.send(batch(sub, &[feed(b"ok"), other])).await.unwrap();
    let first = tokio::time::timeout(T, rx.recv()).await.unwrap().unwrap();
    assert_eq!(
        &first.payload[..],
        b"ok",
        "what came before the fault is handled"
    );
    tokio::time::timeout(T, plugin.shutdown_requested())
        .await
        .expect("the plugin gives up the connection");

    let (plugin, _host) = connect(Plugin::builder().batches(false)).await;
    assert!(!plugin.has_capability(appfw_proto::caps::BATCH));
}
