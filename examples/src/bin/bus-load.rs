//! `bus-load`: the endpoints of the bus benchmark (`examples/benches/bus.rs`). They speak raw
//! frames with blocking I/O and no SDK, so that the same processes doing the same work measure
//! either the appfw host (as plugins: handshake and subscription, then frames) or a minimal relay
//! (`--connect PATH`: frames only), and the difference is the mediator.
//!
//! Roles (`--role`):
//! * `pub --control PATH`: on a datagram `go N SIZE`, writes N PUBLISH frames of SIZE bytes on
//!   `bench.t` as fast as it can (pre-encoded batches of about 256 KiB), then answers `done`;
//!   on `lat N SIZE`, N latency probes (send time in the payload) one every 500 µs.
//! * `sub --report PATH --every N [--no-batch]`: counts PUBLISH frames (also those a BATCH
//!   frame holds: it takes them unless `--no-batch`); sends `ready` once subscribed and its
//!   count each time it reaches a multiple of N (to the datagram socket at `--report`); for
//!   latency probes, `lat P50 P99 MEAN` in µs after a round's last one.
//! * `rr-server [--report PATH]`: answers each REQUEST on `bench.rr` with a REPLY carrying the
//!   same payload; sends `ready` once subscribed (or connected).
//! * `rr-client --control PATH`: on `rr COUNT SIZE`, sends COUNT sequential requests and answers
//!   `p50 p99 mean` round-trip times in microseconds.
//!
//! Every role answers the host's PINGs.
//!
//! With `--nats HOST:PORT` the same roles talk to a NATS server instead (the NATS text protocol,
//! by hand: `PUB`/`SUB`/`MSG`, request/reply through a reply subject), for comparison.

use std::io::{Read, Write};
use std::ops::Range;
use std::os::fd::FromRawFd;
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use appfw_examples::{flag, number_flag};
use appfw_proto::pb::{self, FrameType, SubscriptionKind};
use appfw_proto::{Frame, encode_frame};
use bytes::{Bytes, BytesMut};
use prost::Message as _;

const MAX_FRAME: usize = 4 * 1024 * 1024;

fn die(msg: String) -> ! {
    eprintln!("bus-load: {msg}");
    std::process::exit(1);
}

/// Reads whole frames out of a reused buffer.
struct Reader {
    s: UnixStream,
    buf: Vec<u8>,
    lo: usize,
    hi: usize,
}

impl Reader {
    fn new(s: UnixStream) -> Self {
        Self {
            s,
            buf: vec![0; 1 << 20],
            lo: 0,
            hi: 0,
        }
    }

    /// The next frame's body (after the length prefix), as a range of `self.buf`.
    fn next(&mut self) -> std::io::Result<Range<usize>> {
        loop {
            if self.hi - self.lo >= 4 {
                let mut p = [0u8; 4];
                p.copy_from_slice(&self.buf[self.lo..self.lo + 4]);
                let len = u32::from_be_bytes(p) as usize;
                if self.hi - self.lo >= 4 + len {
                    let r = self.lo + 4..self.lo + 4 + len;
                    self.lo += 4 + len;
                    return Ok(r);
                }
                if 4 + len > self.buf.len() {
                    self.buf.resize(4 + len, 0);
                }
            }
            if self.lo > 0 {
                self.buf.copy_within(self.lo..self.hi, 0);
                self.hi -= self.lo;
                self.lo = 0;
            }
            let n = self.s.read(&mut self.buf[self.hi..])?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            self.hi += n;
        }
    }
}

/// The frame type from the first header bytes (prost writes field 1 first), without decoding.
fn frame_type(body: &[u8]) -> i32 {
    match body.get(2..4) {
        Some([0x08, t]) if *t < 0x80 => i32::from(*t),
        _ => -1,
    }
}

fn header(body: &[u8]) -> pb::Header {
    let hl = usize::from(u16::from_be_bytes([body[0], body[1]]));
    pb::Header::decode(&body[2..2 + hl]).unwrap_or_else(|e| die(format!("bad header: {e}")))
}

fn payload(body: &[u8]) -> &[u8] {
    let hl = usize::from(u16::from_be_bytes([body[0], body[1]]));
    &body[2 + hl..]
}

fn encode(f: &Frame, out: &mut BytesMut) {
    encode_frame(&f.header, &f.payload, MAX_FRAME, out)
        .unwrap_or_else(|e| die(format!("cannot encode: {e}")));
}

fn write_frame(s: &mut UnixStream, f: &Frame) {
    let mut b = BytesMut::new();
    encode(f, &mut b);
    s.write_all(&b)
        .unwrap_or_else(|e| die(format!("write failed: {e}")));
}

fn pong(s: &mut UnixStream, body: &[u8]) {
    let mut f = Frame::new(FrameType::Pong, Bytes::new());
    f.header.request_id = header(body).request_id;
    write_frame(s, &f);
}

/// The connection: the inherited socket after the handshake (a plugin), or the relay's.
fn connect(subscribe: Option<(&str, SubscriptionKind)>) -> (UnixStream, Reader) {
    if let Some(path) = flag("--connect") {
        let s = UnixStream::connect(&path)
            .unwrap_or_else(|e| die(format!("cannot connect to {path}: {e}")));
        let r = Reader::new(s.try_clone().unwrap_or_else(|e| die(e.to_string())));
        return (s, r);
    }
    let fd: i32 = std::env::var(appfw_proto::ENV_PLUGIN_FD)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| die("neither --connect nor APPFW_PLUGIN_FD".into()));
    // SAFETY: the host passed this descriptor for us alone; nothing else in this process owns it.
    let mut s = unsafe { UnixStream::from_raw_fd(fd) };
    let mut r = Reader::new(s.try_clone().unwrap_or_else(|e| die(e.to_string())));
    let hello = pb::Hello {
        min_version: 1,
        max_version: 1,
        plugin_name: std::env::var(appfw_proto::ENV_PLUGIN_NAME).unwrap_or_default(),
        sdk: "bus-load".into(),
        capabilities: if std::env::args().any(|a| a == "--no-batch") {
            vec!["pubsub".into(), "request".into()]
        } else {
            vec!["pubsub".into(), "request".into(), "batch".into()]
        },
        ..Default::default()
    };
    write_frame(&mut s, &Frame::control(FrameType::Hello, &hello));
    loop {
        let range = r.next().unwrap_or_else(|e| die(format!("handshake: {e}")));
        match frame_type(&r.buf[range.clone()]) {
            t if t == FrameType::Welcome as i32 => break,
            t if t == FrameType::Refuse as i32 => die("refused".into()),
            _ => {}
        }
    }
    if let Some((topic, kind)) = subscribe {
        let sub = pb::Subscribe {
            kind: kind as i32,
            max_pending: 1024,
            ..Default::default()
        };
        let mut f = Frame::control(FrameType::Subscribe, &sub);
        f.header.topic = topic.into();
        f.header.request_id = 1;
        write_frame(&mut s, &f);
        loop {
            let range = r.next().unwrap_or_else(|e| die(format!("subscribe: {e}")));
            let body = &r.buf[range];
            match frame_type(body) {
                t if t == FrameType::Reply as i32 => {
                    if let Some(e) = header(body).error {
                        die(format!("subscription refused: {}", e.message));
                    }
                    break;
                }
                t if t == FrameType::Ping as i32 => pong(&mut s, body),
                _ => {}
            }
        }
    }
    (s, r)
}

fn report(to: &str, what: &str) {
    let sock = UnixDatagram::unbound().unwrap_or_else(|e| die(e.to_string()));
    if let Err(e) = sock.send_to(what.as_bytes(), to) {
        die(format!("cannot report to {to}: {e}"));
    }
}

fn sub() {
    let to = flag("--report").unwrap_or_else(|| die("--report PATH".into()));
    let every = number_flag("--every", 1_000_000).max(1);
    let (mut s, mut r) = connect(Some(("bench.t", SubscriptionKind::Events)));
    report(&to, "ready");
    let mut count: u64 = 0;
    let mut lat = Vec::new();
    // A message: a latency probe, or one more counted.
    let mut got = |p: &[u8]| match probe(p, &mut lat) {
        Some(true) => {
            report(&to, &format!("lat {}", rtt_summary(&mut lat)));
            lat.clear();
        }
        Some(false) => {}
        None => {
            count += 1;
            if count % every == 0 {
                report(&to, &count.to_string());
            }
        }
    };
    loop {
        let range = r.next().unwrap_or_else(|e| die(format!("sub: {e}")));
        let body = &r.buf[range];
        match frame_type(body) {
            8 => got(payload(body)),
            // A BATCH: its PUBLISH frames, one by one as above.
            18 => {
                let mut rest = payload(body);
                while let Some((prefix, after)) = rest.split_first_chunk::<4>() {
                    let len = u32::from_be_bytes(*prefix) as usize;
                    let Some(inner) = after.get(..len) else {
                        die("a BATCH frame with a cut message".into());
                    };
                    if frame_type(inner) != 8 {
                        die("a BATCH frame with a message that is not a PUBLISH".into());
                    }
                    got(payload(inner));
                    rest = &after[len..];
                }
            }
            4 => pong(&mut s, body),
            _ => {}
        }
    }
}

/// A latency probe's payload starts with this, then its send time (ns since the Unix epoch,
/// little-endian: the processes share the clock), then 1 on a round's last probe.
const PROBE: &[u8; 8] = b"LATENCY!";
/// The shortest probe.
const PROBE_LEN: usize = 17;

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// If `p` is a probe, records its latency in µs and says whether it is a round's last.
fn probe(p: &[u8], lat: &mut Vec<f64>) -> Option<bool> {
    let rest = p.strip_prefix(PROBE)?;
    let (sent, rest) = rest.split_first_chunk::<8>()?;
    lat.push(now_ns().saturating_sub(u64::from_le_bytes(*sent)) as f64 / 1000.0);
    Some(rest.first() == Some(&1))
}

/// Sends `count` probes of `size` bytes on `bench.t`, one every 500 µs, so that none waits
/// behind another: the latency of a lone message through the mediator.
fn send_probes(w: &Mutex<UnixStream>, count: u64, size: u64) {
    let mut f = Frame::new(FrameType::Publish, Bytes::new());
    f.header.topic = "bench.t".into();
    let mut out = BytesMut::new();
    let size = (size as usize).max(PROBE_LEN);
    let start = Instant::now();
    for i in 0..count {
        let next = start + std::time::Duration::from_micros(500 * i);
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let mut p = Vec::with_capacity(size);
        p.extend_from_slice(PROBE);
        p.extend_from_slice(&now_ns().to_le_bytes());
        p.push(u8::from(i + 1 == count));
        p.resize(size, b'x');
        f.payload = Bytes::from(p);
        out.clear();
        encode(&f, &mut out);
        let mut s = w.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        s.write_all(&out)
            .unwrap_or_else(|e| die(format!("probe: {e}")));
    }
}

/// Waits for the next command on the control socket, `VERB COUNT SIZE`: its numbers and
/// where to answer.
fn next_command(sock: &UnixDatagram) -> (u64, u64, std::os::unix::net::SocketAddr) {
    let (_, count, size, from) = next_verb(sock);
    (count, size, from)
}

/// [`next_command`] with its verb.
fn next_verb(sock: &UnixDatagram) -> (String, u64, u64, std::os::unix::net::SocketAddr) {
    let mut cmd = [0u8; 256];
    let (n, from) = sock
        .recv_from(&mut cmd)
        .unwrap_or_else(|e| die(e.to_string()));
    let line = String::from_utf8_lossy(&cmd[..n]);
    let verb = line
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    let words: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|w| w.parse().ok())
        .collect();
    let [count, size] = words[..] else {
        die(format!("bad command {line:?}"));
    };
    (verb, count, size, from)
}

/// Answers a command (best effort: the bench times out if it is lost).
fn reply(sock: &UnixDatagram, to: &std::os::unix::net::SocketAddr, what: &[u8]) {
    if let Some(p) = to.as_pathname() {
        let _ = sock.send_to(what, p);
    }
}

/// Round-trip times in µs as the bench reads them: `P50 P99 MEAN`.
fn rtt_summary(rtt: &mut [f64]) -> String {
    rtt.sort_by(f64::total_cmp);
    let pct = |p: f64| rtt[((rtt.len() as f64 - 1.0) * p).round() as usize];
    let mean = rtt.iter().sum::<f64>() / rtt.len() as f64;
    format!("{:.1} {:.1} {:.1}", pct(0.5), pct(0.99), mean)
}

fn control() -> (UnixDatagram, String) {
    let path = flag("--control").unwrap_or_else(|| die("--control PATH".into()));
    let _ = std::fs::remove_file(&path);
    let sock = UnixDatagram::bind(&path).unwrap_or_else(|e| die(format!("bind {path}: {e}")));
    (sock, path)
}

/// Answers PINGs arriving on `r` through the shared writer (the publisher's other direction).
fn answer_pings(w: Arc<Mutex<UnixStream>>, mut r: Reader) {
    std::thread::spawn(move || {
        while let Ok(range) = r.next() {
            let body = &r.buf[range];
            if frame_type(body) == FrameType::Ping as i32 {
                let mut s = w.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                pong(&mut s, body);
            }
        }
    });
}

fn publisher() {
    let (sock, _path) = control();
    let (s, r) = connect(None);
    let w = Arc::new(Mutex::new(s));
    answer_pings(Arc::clone(&w), r);
    loop {
        let (verb, count, size, from) = next_verb(&sock);
        if verb == "lat" {
            send_probes(&w, count, size);
            reply(&sock, &from, b"done");
            continue;
        }
        let mut one = Frame::new(FrameType::Publish, Bytes::from(vec![b'x'; size as usize]));
        one.header.topic = "bench.t".into();
        let mut single = BytesMut::new();
        encode(&one, &mut single);
        let per = (256 * 1024 / single.len()).max(1);
        let mut batch = Vec::with_capacity(per * single.len());
        for _ in 0..per {
            batch.extend_from_slice(&single);
        }
        let mut left = count as usize;
        while left > 0 {
            let k = left.min(per);
            let mut s = w.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            s.write_all(&batch[..k * single.len()])
                .unwrap_or_else(|e| die(format!("publish: {e}")));
            left -= k;
        }
        reply(&sock, &from, b"done");
    }
}

fn rr_server() {
    let (mut s, mut r) = connect(Some(("bench.rr", SubscriptionKind::Requests)));
    if let Some(to) = flag("--report") {
        report(&to, "ready");
    }
    let mut out = BytesMut::new();
    loop {
        let range = r.next().unwrap_or_else(|e| die(format!("rr-server: {e}")));
        let body = &r.buf[range];
        match frame_type(body) {
            9 => {
                let h = header(body);
                let reply = pb::Header {
                    r#type: FrameType::Reply as i32,
                    request_id: h.request_id,
                    ..Default::default()
                };
                out.clear();
                encode_frame(&reply, payload(body), MAX_FRAME, &mut out)
                    .unwrap_or_else(|e| die(e.to_string()));
                s.write_all(&out).unwrap_or_else(|e| die(e.to_string()));
            }
            4 => pong(&mut s, body),
            _ => {}
        }
    }
}

fn rr_client() {
    let (sock, _path) = control();
    let (mut s, mut r) = connect(None);
    let mut id = 1u64;
    loop {
        let (count, size, from) = next_command(&sock);
        let mut req = Frame::new(FrameType::Request, Bytes::from(vec![b'x'; size as usize]));
        req.header.topic = "bench.rr".into();
        let mut out = BytesMut::new();
        let mut rtt = Vec::with_capacity(count as usize);
        for _ in 0..count {
            id += 1;
            req.header.request_id = id;
            out.clear();
            encode(&req, &mut out);
            let t0 = Instant::now();
            s.write_all(&out).unwrap_or_else(|e| die(e.to_string()));
            loop {
                let range = r.next().unwrap_or_else(|e| die(format!("rr-client: {e}")));
                let body = &r.buf[range];
                match frame_type(body) {
                    10 => {
                        let h = header(body);
                        if let Some(e) = h.error {
                            die(format!("request failed: {} {}", e.code, e.message));
                        }
                        if h.request_id == id {
                            break;
                        }
                    }
                    4 => pong(&mut s, body),
                    _ => {}
                }
            }
            rtt.push(t0.elapsed().as_secs_f64() * 1e6);
        }
        reply(&sock, &from, rtt_summary(&mut rtt).as_bytes());
    }
}

/// The NATS side: the same roles over the NATS text protocol.
mod nats {
    use super::*;
    use std::net::TcpStream;

    pub struct Conn {
        pub w: TcpStream,
        r: TcpStream,
        buf: Vec<u8>,
        lo: usize,
        hi: usize,
        /// Told `lost` when the server drops us (a slow consumer), before exiting.
        pub report_to: Option<String>,
    }

    /// What arrived.
    pub enum Event {
        /// A message: its reply subject and payload, as ranges of the buffer.
        Msg(Option<Range<usize>>, Range<usize>),
        Ping,
        Pong,
        Other,
    }

    impl Conn {
        pub fn connect(addr: &str) -> Self {
            let w = TcpStream::connect(addr).unwrap_or_else(|e| die(format!("nats {addr}: {e}")));
            let _ = w.set_nodelay(true);
            let r = w.try_clone().unwrap_or_else(|e| die(e.to_string()));
            let mut c = Self {
                w,
                r,
                buf: vec![0; 1 << 20],
                lo: 0,
                hi: 0,
                report_to: None,
            };
            c.send(b"CONNECT {\"verbose\":false,\"pedantic\":false,\"echo\":false}\r\n");
            c.sync();
            c
        }

        pub fn send(&mut self, b: &[u8]) {
            self.w
                .write_all(b)
                .unwrap_or_else(|e| die(format!("nats write: {e}")));
        }

        /// PING and wait for the PONG: everything sent before is processed by the server.
        pub fn sync(&mut self) {
            self.send(b"PING\r\n");
            loop {
                match self.next() {
                    Event::Pong => return,
                    Event::Ping => self.send(b"PONG\r\n"),
                    _ => {}
                }
            }
        }

        fn fill(&mut self) {
            if self.lo > 0 {
                self.buf.copy_within(self.lo..self.hi, 0);
                self.hi -= self.lo;
                self.lo = 0;
            }
            if self.hi == self.buf.len() {
                let n = self.buf.len() * 2;
                self.buf.resize(n, 0);
            }
            let n = match self.r.read(&mut self.buf[self.hi..]) {
                Ok(0) | Err(_) => {
                    if let Some(to) = &self.report_to {
                        report(to, "lost");
                    }
                    die("the NATS server closed the connection (slow consumer?)".into());
                }
                Ok(n) => n,
            };
            self.hi += n;
        }

        pub fn next(&mut self) -> Event {
            loop {
                let window = &self.buf[self.lo..self.hi];
                if let Some(eol) = window.windows(2).position(|w| w == b"\r\n") {
                    let line_start = self.lo;
                    let line = &self.buf[line_start..line_start + eol];
                    if line.starts_with(b"MSG ") {
                        let text = std::str::from_utf8(line).unwrap_or_default();
                        let parts: Vec<&str> = text.split(' ').collect();
                        let size: usize = parts.last().and_then(|p| p.parse().ok()).unwrap_or(0);
                        let body = line_start + eol + 2;
                        if self.hi < body + size + 2 {
                            if body + size + 2 > self.buf.len() {
                                self.buf.resize(body + size + 2, 0);
                            }
                            self.fill();
                            continue;
                        }
                        let reply = (parts.len() == 5).then(|| {
                            // MSG subject sid reply size: the reply subject's position.
                            let off = parts[0].len() + parts[1].len() + parts[2].len() + 3;
                            line_start + off..line_start + off + parts[3].len()
                        });
                        self.lo = body + size + 2;
                        return Event::Msg(reply, body..body + size);
                    }
                    self.lo = line_start + eol + 2;
                    return match line {
                        b"PING" => Event::Ping,
                        b"PONG" => Event::Pong,
                        _ => Event::Other,
                    };
                }
                self.fill();
            }
        }

        pub fn bytes(&self, r: Range<usize>) -> &[u8] {
            &self.buf[r]
        }
    }

    pub fn sub(addr: &str) {
        let to = flag("--report").unwrap_or_else(|| die("--report PATH".into()));
        let every = number_flag("--every", 1_000_000).max(1);
        let mut c = Conn::connect(addr);
        c.send(b"SUB bench.t 1\r\n");
        c.sync();
        c.report_to = Some(to.clone());
        report(&to, "ready");
        let mut count = 0u64;
        loop {
            match c.next() {
                Event::Msg(..) => {
                    count += 1;
                    if count % every == 0 {
                        report(&to, &count.to_string());
                    }
                }
                Event::Ping => c.send(b"PONG\r\n"),
                _ => {}
            }
        }
    }

    pub fn publisher(addr: &str) {
        let (sock, _path) = control();
        let mut c = Conn::connect(addr);
        // One writer for the batches and the PONGs, held across each whole write: a PONG
        // written between two parts of a batch's write cut a PUB in two (the server then
        // closed the connection with a parser error).
        let w = Arc::new(Mutex::new(
            c.w.try_clone().unwrap_or_else(|e| die(e.to_string())),
        ));
        let pongs = Arc::clone(&w);
        std::thread::spawn(move || {
            loop {
                if let Event::Ping = c.next() {
                    pongs
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .write_all(b"PONG\r\n")
                        .unwrap_or_else(|e| die(format!("nats write: {e}")));
                }
            }
        });
        loop {
            let (count, size, from) = next_command(&sock);
            let mut single = format!("PUB bench.t {size}\r\n").into_bytes();
            single.extend(std::iter::repeat_n(b'x', size as usize));
            single.extend_from_slice(b"\r\n");
            let per = (256 * 1024 / single.len()).max(1);
            let batch = single.repeat(per);
            let mut left = count as usize;
            while left > 0 {
                let k = left.min(per);
                w.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .write_all(&batch[..k * single.len()])
                    .unwrap_or_else(|e| die(format!("publish: {e}")));
                left -= k;
            }
            reply(&sock, &from, b"done");
        }
    }

    pub fn rr_server(addr: &str) {
        let mut c = Conn::connect(addr);
        c.send(b"SUB bench.rr 1\r\n");
        c.sync();
        if let Some(to) = flag("--report") {
            report(&to, "ready");
        }
        let mut out = Vec::new();
        loop {
            match c.next() {
                Event::Msg(Some(reply), body) => {
                    out.clear();
                    out.extend_from_slice(b"PUB ");
                    out.extend_from_slice(c.bytes(reply));
                    out.extend_from_slice(format!(" {}\r\n", body.len()).as_bytes());
                    out.extend_from_slice(c.bytes(body));
                    out.extend_from_slice(b"\r\n");
                    let o = std::mem::take(&mut out);
                    c.send(&o);
                    out = o;
                }
                Event::Ping => c.send(b"PONG\r\n"),
                _ => {}
            }
        }
    }

    pub fn rr_client(addr: &str) {
        let (sock, _path) = control();
        let mut c = Conn::connect(addr);
        c.send(b"SUB _INBOX.bench 1\r\n");
        c.sync();
        loop {
            let (count, size, from) = next_command(&sock);
            let mut req = format!("PUB bench.rr _INBOX.bench {size}\r\n").into_bytes();
            req.extend(std::iter::repeat_n(b'x', size as usize));
            req.extend_from_slice(b"\r\n");
            let mut rtt = Vec::with_capacity(count as usize);
            for _ in 0..count {
                let t0 = Instant::now();
                c.send(&req);
                loop {
                    match c.next() {
                        Event::Msg(..) => break,
                        Event::Ping => c.send(b"PONG\r\n"),
                        _ => {}
                    }
                }
                rtt.push(t0.elapsed().as_secs_f64() * 1e6);
            }
            reply(&sock, &from, rtt_summary(&mut rtt).as_bytes());
        }
    }
}

fn main() {
    if let Some(addr) = flag("--nats") {
        match flag("--role").as_deref() {
            Some("pub") => nats::publisher(&addr),
            Some("sub") => nats::sub(&addr),
            Some("rr-server") => nats::rr_server(&addr),
            Some("rr-client") => nats::rr_client(&addr),
            other => die(format!("unknown --role {other:?}")),
        }
    }
    match flag("--role").as_deref() {
        Some("pub") => publisher(),
        Some("sub") => sub(),
        Some("rr-server") => rr_server(),
        Some("rr-client") => rr_client(),
        other => die(format!(
            "unknown --role {other:?} (pub, sub, rr-server, rr-client)"
        )),
    }
}
