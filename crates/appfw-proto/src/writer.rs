//! The batching frame writer shared by the host and the SDK.
//!
//! Frames queued on a channel are encoded into one buffer until the channel is empty (or the
//! buffer is large), then written with one syscall: a burst costs few writes and a lone frame
//! goes out at once. Payloads of [`DIRECT_PAYLOAD`] bytes or more are not copied into the buffer
//! but written from their own memory, so relaying a big message never copies it.

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{BufMut, Bytes, BytesMut};
use prost::Message as _;
use prost::encoding::{encode_varint, encoded_len_varint};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{Frame, FrameError, batch, encode_frame_of, header, run};

/// Bytes buffered before a write even if more frames are queued.
pub const WRITE_BATCH_BYTES: usize = 256 * 1024;
/// Payloads at least this large are written directly instead of copied into the batch buffer.
pub const DIRECT_PAYLOAD: usize = 32 * 1024;

/// Per-direction sequence numbering of a connection.
#[derive(Debug)]
pub struct Sequencer {
    next: u64,
    /// Highest seq received from the peer, stamped as `ack` on every frame written.
    pub peer_seq: std::sync::Arc<AtomicU64>,
}

impl Sequencer {
    /// Numbering that continues after `last_sent` (0 on a fresh connection).
    pub fn new(last_sent: u64, peer_seq: std::sync::Arc<AtomicU64>) -> Self {
        Self {
            next: last_sent + 1,
            peer_seq,
        }
    }
}

/// Where a writer takes its frames from: a channel, or the host's outbox.
pub trait FrameSource {
    /// Waits for the next frame; `None` once no frame can come any more.
    fn next_frame(&mut self) -> impl std::future::Future<Output = Option<Frame>> + Send;
    /// The next frame if one is queued.
    fn try_next_frame(&mut self) -> Option<Frame>;
    /// Lends queued frames to `f` where they lie, in order, while it takes them (returns
    /// `true`), and drops those; how many it took. A source that cannot lend frames takes none,
    /// and the writer goes on with [`FrameSource::try_next_frame`].
    fn take_in_place(&mut self, f: &mut dyn FnMut(&mut Frame) -> bool) -> usize {
        let _ = f;
        0
    }
}

impl FrameSource for mpsc::Receiver<Frame> {
    async fn next_frame(&mut self) -> Option<Frame> {
        self.recv().await
    }

    fn try_next_frame(&mut self) -> Option<Frame> {
        self.try_recv().ok()
    }
}

/// Why the writer stopped.
#[derive(Debug)]
pub enum WriterEnd {
    /// Every sender is gone, or `finish` was cancelled and the queue drained.
    Finished,
    /// The socket failed.
    Io(std::io::Error),
}

/// Writes frames from `rx` to `sock` until the senders are gone, `finish` is cancelled (after
/// draining what is queued), or a write fails. A frame that cannot be encoded (larger than
/// `max_frame`) is passed to `on_drop` and skipped; the connection stays usable.
pub async fn write_frames<W, R, F>(
    sock: &mut W,
    rx: &mut R,
    seq: &mut Sequencer,
    max_frame: usize,
    finish: &CancellationToken,
    mut on_drop: F,
) -> WriterEnd
where
    W: AsyncWrite + Unpin,
    R: FrameSource,
    F: FnMut(&Frame, FrameError),
{
    let mut buf = BytesMut::with_capacity(16 * 1024);
    loop {
        let first = tokio::select! {
            biased;
            f = rx.next_frame() => f,
            () = finish.cancelled() => rx.try_next_frame(),
        };
        let Some(mut frame) = first else {
            let _ = sock.flush().await;
            return WriterEnd::Finished;
        };
        loop {
            // A small payload is only encoded (no future built per frame); a large one is
            // written from its own memory.
            if is_small(&frame) {
                put_small(&mut buf, &mut frame, seq, max_frame, &mut on_drop);
            } else if let Err(e) =
                put_direct(sock, &mut buf, &mut frame, seq, max_frame, &mut on_drop).await
            {
                return WriterEnd::Io(e);
            }
            if buf.len() >= WRITE_BATCH_BYTES {
                break;
            }
            // The small frames queued behind it are encoded where they lie.
            rx.take_in_place(&mut |f| {
                if !is_small(f) || buf.len() >= WRITE_BATCH_BYTES {
                    return false;
                }
                put_small(&mut buf, f, seq, max_frame, &mut on_drop);
                true
            });
            if buf.len() >= WRITE_BATCH_BYTES {
                break;
            }
            match rx.try_next_frame() {
                Some(next) => frame = next,
                None => break,
            }
        }
        if !buf.is_empty() {
            if let Err(e) = sock.write_all(&buf).await {
                return WriterEnd::Io(e);
            }
            buf.clear();
        }
    }
}

/// Whether a frame is copied into the batch: a small payload, or a run written as its messages
/// (whose payloads are all small). A run written as BATCH frames is a large payload when its
/// bytes are.
#[inline(always)]
fn is_small(frame: &Frame) -> bool {
    frame.payload.len() < DIRECT_PAYLOAD || (frame.wire.run_len() > 0 && !frame.wire.is_batch())
}

/// Appends one frame with a small payload, or a run, to the batch.
#[inline(always)]
fn put_small<F>(
    buf: &mut BytesMut,
    frame: &mut Frame,
    seq: &mut Sequencer,
    max_frame: usize,
    on_drop: &mut F,
) where
    F: FnMut(&Frame, FrameError),
{
    if frame.wire.is_batch() {
        let copied = put_batch(buf, frame, 0, seq, max_frame, on_drop, false);
        debug_assert!(copied.is_none());
        return;
    }
    if frame.wire.run_len() > 0 {
        put_run(buf, frame, seq, max_frame, on_drop);
        return;
    }
    frame.header.seq = seq.next;
    frame.header.ack = seq.peer_seq.load(Ordering::Relaxed);
    match encode_frame_of(frame, &frame.payload, max_frame, buf) {
        Ok(()) => seq.next += 1,
        Err(e) => on_drop(frame, e),
    }
}

/// Appends the messages of a run (see [`crate::WireHeader::run`]) to the batch: each one's
/// received header with the run header's stamps and its own `seq` appended, then its payload.
/// This loop is the relay's per-message work for a stream on one topic, so it only copies.
fn put_run<F>(
    buf: &mut BytesMut,
    run: &mut Frame,
    seq: &mut Sequencer,
    max_frame: usize,
    on_drop: &mut F,
) where
    F: FnMut(&Frame, FrameError),
{
    let frames = run.wire.run_len() as usize;
    run.header.ack = seq.peer_seq.load(Ordering::Relaxed);
    run.header.seq = 0;
    // The stamps every message of the run shares (sender, ack, subscription id), encoded once;
    // each message adds only its seq. On the stack: a plugin's name always fits (at most 64
    // bytes and an instance suffix); a longer sender takes a Vec.
    let shared_len = header::patched_len(0, header::RUN_FIELDS, &run.header);
    let mut stack = [0u8; 128];
    let mut heap = Vec::new();
    let shared: &[u8] = match stack.get_mut(..shared_len) {
        Some(mut w) => {
            header::put_patched(&[], header::RUN_FIELDS, &run.header, &mut w);
            &stack[..shared_len]
        }
        None => {
            header::put_patched(&[], header::RUN_FIELDS, &run.header, &mut heap);
            &heap
        }
    };
    // A seq stamp: a key byte and at most ten.
    buf.reserve(run.payload.len() + frames * (shared.len() + 11));
    let body: &[u8] = &run.payload;
    let mut at = 0;
    while at < body.len() {
        // The run was checked when it was made; a frame that does not parse now ends it.
        let Some(parts) = run::whole_frame(&body[at..], usize::MAX) else {
            debug_assert!(false, "a run holds whole frames only");
            break;
        };
        let payload = &body[at + parts.len - parts.payload..at + parts.len];
        let header_len = parts.header.len() + shared.len() + 1 + encoded_len_varint(seq.next);
        let frame_len = crate::HEADER_LEN_LEN + header_len + payload.len();
        if header_len > usize::from(u16::MAX)
            || frame_len > max_frame
            || u32::try_from(frame_len).is_err()
        {
            let end = at + parts.len;
            drop_message(
                &run.payload,
                at..end,
                header_len,
                frame_len,
                max_frame,
                on_drop,
            );
        } else {
            // Both fit their fields (checked above).
            buf.put_u32(frame_len as u32);
            buf.put_u16(header_len as u16);
            buf.put_slice(parts.header);
            buf.put_slice(shared);
            // seq: field 2, varint.
            buf.put_u8(2 << 3);
            encode_varint(seq.next, buf);
            buf.put_slice(payload);
            seq.next += 1;
        }
        at += parts.len;
    }
}

/// Passes the message of a run at `body[at]` (length prefix included) that cannot be written to
/// `on_drop`: its header (`header_len` bytes) or its frame (`frame_len`) is too large.
fn drop_message<F>(
    body: &Bytes,
    at: std::ops::Range<usize>,
    header_len: usize,
    frame_len: usize,
    max_frame: usize,
    on_drop: &mut F,
) where
    F: FnMut(&Frame, FrameError),
{
    let err = if header_len > usize::from(u16::MAX) {
        FrameError::HeaderTooLarge(header_len)
    } else {
        FrameError::TooLarge {
            len: frame_len,
            max: max_frame,
        }
    };
    let message = (at.start + crate::LENGTH_PREFIX_LEN).min(at.end)..at.end;
    let dropped = body
        .get(message.clone())
        .and_then(|_| crate::decode_body(body.slice(message)).ok())
        .unwrap_or_else(|| Frame::new(crate::pb::FrameType::Publish, Bytes::new()));
    on_drop(&dropped, err);
}

/// Appends the header of the next BATCH frame of a run (see [`crate::WireHeader::batch`])
/// whose payload starts at `body[at..]`: the run header's `sender`, `topic` and
/// `subscription_id`, with `seq` and `ack`. Its payload is the whole frames from `at` that fit
/// the maximum frame size; `Ok` with where they end, for the caller to write them. If not even
/// the first fits, that message is passed to `on_drop` and `Err` says where it ends (the caller
/// goes on after it).
fn batch_header<F>(
    buf: &mut BytesMut,
    run: &mut Frame,
    body: &Bytes,
    at: usize,
    seq: &mut Sequencer,
    max_frame: usize,
    on_drop: &mut F,
) -> Result<usize, usize>
where
    F: FnMut(&Frame, FrameError),
{
    run.header.r#type = crate::pb::FrameType::Batch as i32;
    run.header.seq = seq.next;
    run.header.ack = seq.peer_seq.load(Ordering::Relaxed);
    let header_len = run.header.encoded_len();
    let room = max_frame.saturating_sub(crate::HEADER_LEN_LEN + header_len);
    let end = match batch::next_chunk(body, at, room) {
        batch::Chunk::Fits(end) if header_len <= usize::from(u16::MAX) => end,
        batch::Chunk::Fits(end) | batch::Chunk::TooLarge(end) => {
            let frame_len = crate::HEADER_LEN_LEN + header_len + (end - at);
            drop_message(body, at..end, header_len, frame_len, max_frame, on_drop);
            return Err(end);
        }
    };
    let frame_len = crate::HEADER_LEN_LEN + header_len + (end - at);
    // Both fit their fields: the header was checked above, and the frame is within max_frame
    // (a u32 by the time it was read).
    buf.reserve(crate::LENGTH_PREFIX_LEN + frame_len - (end - at));
    buf.put_u32(u32::try_from(frame_len).unwrap_or(u32::MAX));
    buf.put_u16(header_len as u16);
    run.header.encode_raw(buf);
    seq.next += 1;
    Ok(end)
}

/// Appends the BATCH frames of a run's payload from `at` on to the batch, copying their
/// messages, until the end, or (if `direct`) until a frame whose payload is large enough to be
/// written from its own memory: then its header is in the batch, and the part of the payload
/// it holds is returned for the caller to write.
fn put_batch<F>(
    buf: &mut BytesMut,
    run: &mut Frame,
    mut at: usize,
    seq: &mut Sequencer,
    max_frame: usize,
    on_drop: &mut F,
    direct: bool,
) -> Option<(usize, usize)>
where
    F: FnMut(&Frame, FrameError),
{
    let body = run.payload.clone();
    while at < body.len() {
        match batch_header(buf, run, &body, at, seq, max_frame, on_drop) {
            Ok(end) if direct && end - at >= DIRECT_PAYLOAD => return Some((at, end)),
            Ok(end) => {
                buf.put_slice(&body[at..end]);
                at = end;
            }
            Err(end) => at = end,
        }
    }
    None
}

/// Writes the batch with one frame's header at its end, then the frame's large payload from
/// its own memory (a run as BATCH frames likewise).
async fn put_direct<W, F>(
    sock: &mut W,
    buf: &mut BytesMut,
    frame: &mut Frame,
    seq: &mut Sequencer,
    max_frame: usize,
    on_drop: &mut F,
) -> std::io::Result<()>
where
    W: AsyncWrite + Unpin,
    F: FnMut(&Frame, FrameError),
{
    if frame.wire.is_batch() {
        // A run as BATCH frames: the large ones' payloads from their own memory.
        let mut at = 0;
        while let Some((start, end)) = put_batch(buf, frame, at, seq, max_frame, on_drop, true) {
            write_both(sock, buf, &frame.payload[start..end]).await?;
            buf.clear();
            at = end;
        }
        return Ok(());
    }
    frame.header.seq = seq.next;
    frame.header.ack = seq.peer_seq.load(Ordering::Relaxed);
    let start = buf.len();
    if let Err(e) = encode_frame_of(frame, &[], max_frame, buf) {
        on_drop(frame, e);
        return Ok(());
    }
    // The prefix was computed without the payload: patch it, then write the payload from its
    // own memory.
    let total = buf.len() - start - crate::LENGTH_PREFIX_LEN + frame.payload.len();
    let Some(total32) = u32::try_from(total).ok().filter(|_| total <= max_frame) else {
        buf.truncate(start);
        on_drop(
            frame,
            FrameError::TooLarge {
                len: total,
                max: max_frame,
            },
        );
        return Ok(());
    };
    buf[start..start + 4].copy_from_slice(&total32.to_be_bytes());
    write_both(sock, buf, &frame.payload).await?;
    buf.clear();
    seq.next += 1;
    Ok(())
}

/// Writes `a` then `b` with as few (vectored) writes as the socket allows: usually one.
/// By hand because `write_all_vectored` is not stable in std nor offered by tokio.
async fn write_both<W: AsyncWrite + Unpin>(
    sock: &mut W,
    a: &[u8],
    b: &[u8],
) -> std::io::Result<()> {
    let mut bufs = [std::io::IoSlice::new(a), std::io::IoSlice::new(b)];
    let mut slices: &mut [std::io::IoSlice<'_>] = &mut bufs;
    while !slices.is_empty() {
        match sock.write_vectored(slices).await {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => std::io::IoSlice::advance_slices(&mut slices, n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FrameCodec;
    use crate::pb::FrameType;
    use bytes::Bytes;
    use futures_util::StreamExt;
    use std::sync::Arc;
    use tokio_util::codec::FramedRead;

    #[tokio::test]
    async fn mixed_small_and_direct_payloads_arrive_in_order_with_sequence_numbers() {
        let (mut a, b) = tokio::io::duplex(1 << 20);
        let (tx, mut rx) = mpsc::channel(16);
        let sizes = [3usize, DIRECT_PAYLOAD + 5, 0, 100_000, 7];
        for (i, n) in sizes.iter().enumerate() {
            let mut f = Frame::new(FrameType::Publish, Bytes::from(vec![i as u8; *n]));
            f.header.topic = format!("t{i}").into();
            tx.send(f).await.unwrap();
        }
        // One that is too large is skipped, not fatal.
        tx.send(Frame::new(
            FrameType::Publish,
            Bytes::from(vec![0u8; 300_000]),
        ))
        .await
        .unwrap();
        tx.send(Frame::new(FrameType::Publish, Bytes::from_static(b"last")))
            .await
            .unwrap();
        drop(tx);
        let mut seq = Sequencer::new(0, Arc::new(AtomicU64::new(42)));
        let mut dropped = 0;
        let end = write_frames(
            &mut a,
            &mut rx,
            &mut seq,
            200_000,
            &CancellationToken::new(),
            |_, _| dropped += 1,
        )
        .await;
        assert!(matches!(end, WriterEnd::Finished));
        drop(a);
        assert_eq!(dropped, 1);
        let frames: Vec<Frame> = FramedRead::new(b, FrameCodec::new(200_000))
            .map(|f| f.unwrap())
            .collect()
            .await;
        assert_eq!(frames.len(), sizes.len() + 1);
        for (i, f) in frames.iter().enumerate() {
            assert_eq!(f.header.seq, i as u64 + 1);
            assert_eq!(f.header.ack, 42);
        }
        for (i, n) in sizes.iter().enumerate() {
            assert_eq!(frames[i].payload.len(), *n);
            assert_eq!(frames[i].header.topic, format!("t{i}"));
        }
        assert_eq!(&frames[5].payload[..], b"last");
    }

    /// Writes `payloads` (as a publisher sent them on topic `t`) queued as one run from
    /// `sender` (as BATCH frames if `batch`), with frames of at most `max`: what was written,
    /// decoded, and what was dropped.
    async fn write_run_as(
        payloads: &[Bytes],
        sender: &str,
        max: usize,
        batch: bool,
    ) -> (Vec<Frame>, Vec<(usize, &'static str)>) {
        let mut received = BytesMut::new();
        for (i, p) in payloads.iter().enumerate() {
            let mut f = Frame::new(FrameType::Publish, p.clone());
            f.header.topic = "t".into();
            f.header.seq = 900 + i as u64;
            f.header.subscription_id = 77;
            crate::encode_frame(&f.header, &f.payload, 1 << 20, &mut received).unwrap();
        }
        let mut run = Frame::new(FrameType::Publish, received.freeze());
        run.header.topic = "t".into();
        run.header.sender = sender.into();
        run.header.subscription_id = 5;
        let n = payloads.len() as u32;
        run.wire = if batch {
            crate::WireHeader::batch(n)
        } else {
            crate::WireHeader::run(n)
        };
        let (tx, mut rx) = mpsc::channel(1);
        tx.send(run).await.unwrap();
        drop(tx);
        let mut out = Vec::new();
        let mut seq = Sequencer::new(0, Arc::new(AtomicU64::new(42)));
        let mut dropped = Vec::new();
        let end = write_frames(
            &mut out,
            &mut rx,
            &mut seq,
            max,
            &CancellationToken::new(),
            |f, e| dropped.push((f.payload.len(), e.code())),
        )
        .await;
        assert!(matches!(end, WriterEnd::Finished));
        let frames = FramedRead::new(&out[..], FrameCodec::new(max))
            .map(|f| f.unwrap())
            .collect()
            .await;
        (frames, dropped)
    }

    async fn write_run(
        payloads: &[Bytes],
        sender: &str,
        max: usize,
    ) -> (Vec<Frame>, Vec<(usize, &'static str)>) {
        write_run_as(payloads, sender, max, false).await
    }

    /// BATCH frames written for a run: each checked (numbered in order, stamped, within
    /// `max`), with the messages each holds.
    async fn write_batches(
        payloads: &[Bytes],
        max: usize,
    ) -> (Vec<Vec<Frame>>, Vec<(usize, &'static str)>) {
        let (frames, dropped) = write_run_as(payloads, "pub", max, true).await;
        let mut batches = Vec::new();
        for (i, f) in frames.iter().enumerate() {
            assert_eq!(f.frame_type(), Some(FrameType::Batch));
            assert_eq!(f.header.seq, i as u64 + 1);
            assert_eq!(f.header.ack, 42);
            assert_eq!(f.header.sender, "pub");
            assert_eq!(f.header.topic, "t");
            assert_eq!(f.header.subscription_id, 5);
            let messages: Vec<Frame> = crate::batch::unbatch(f).map(|m| m.unwrap()).collect();
            for m in &messages {
                assert_eq!(m.header.sender, "pub");
                assert_eq!(m.header.subscription_id, 5, "the batch's stamp wins");
            }
            batches.push(messages);
        }
        (batches, dropped)
    }

    fn numbered(sizes: &[usize]) -> Vec<Bytes> {
        sizes
            .iter()
            .enumerate()
            .map(|(i, n)| Bytes::from(vec![i as u8; *n]))
            .collect()
    }

    /// Each batch's messages as (payload length, first byte).
    fn shapes(batches: &[Vec<Frame>]) -> Vec<Vec<(usize, u8)>> {
        batches
            .iter()
            .map(|b| b.iter().map(|m| (m.payload.len(), m.payload[0])).collect())
            .collect()
    }

    #[tokio::test]
    async fn a_batch_holds_the_run_as_sent_split_to_fit_the_maximum() {
        // The whole run in one frame.
        let payloads = numbered(&[10, 150, 20]);
        let (batches, dropped) = write_batches(&payloads, 1 << 20).await;
        assert!(dropped.is_empty());
        assert_eq!(shapes(&batches), [vec![(10, 0), (150, 1), (20, 2)]]);
        // At 150 bytes a frame: the middle message does not fit even alone and is dropped;
        // the others go in a frame each, numbered without a gap.
        let (batches, dropped) = write_batches(&payloads, 150).await;
        assert_eq!(dropped, [(150, "frame_too_large")]);
        assert_eq!(shapes(&batches), [vec![(10, 0)], vec![(20, 2)]]);
    }

    #[tokio::test]
    async fn a_large_batch_is_written_from_its_own_memory_in_frames_that_fit() {
        // About 44 KiB of messages: past DIRECT_PAYLOAD, so written without the copy.
        let payloads = numbered(&[400; 100]);
        let (batches, dropped) = write_batches(&payloads, 1 << 20).await;
        assert!(dropped.is_empty());
        assert_eq!(batches.len(), 1);
        assert_eq!(
            shapes(&batches)[0],
            (0..100).map(|i| (400, i)).collect::<Vec<_>>()
        );
        // With 16 KiB frames: several, every message once and in order.
        let (batches, dropped) = write_batches(&payloads, 16 * 1024).await;
        assert!(dropped.is_empty());
        assert!(batches.len() >= 3, "{} frames", batches.len());
        let all: Vec<(usize, u8)> = shapes(&batches).into_iter().flatten().collect();
        assert_eq!(all, (0..100).map(|i| (400, i)).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_run_is_written_as_its_messages_with_their_own_stamps() {
        // Three messages queued as one run; the middle one is too large once stamped, and is
        // dropped alone.
        let payloads = numbered(&[10, 150, 20]);
        let (frames, dropped) = write_run(&payloads, "pub", 150).await;
        assert_eq!(dropped, [(150, "frame_too_large")]);
        assert_eq!(frames.len(), 2);
        for (f, (n, first)) in frames.iter().zip([(10, 0u8), (20, 2)]) {
            assert_eq!((f.payload.len(), f.payload[0]), (n, first));
            assert_eq!(f.header.topic, "t");
            assert_eq!(f.header.sender, "pub");
            assert_eq!(
                f.header.subscription_id, 5,
                "the stamp wins over the sent one"
            );
            assert_eq!(f.header.ack, 42);
        }
        assert_eq!(frames[0].header.seq, 1);
        assert_eq!(frames[1].header.seq, 2);
    }

    #[tokio::test]
    async fn a_run_from_a_sender_too_long_for_the_stack_is_stamped_alike() {
        let sender = "s".repeat(200);
        let (frames, dropped) = write_run(&[Bytes::from_static(b"x")], &sender, 1 << 20).await;
        assert!(dropped.is_empty());
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].header.sender, sender);
        assert_eq!(frames[0].header.subscription_id, 5);
        assert_eq!(frames[0].header.seq, 1);
        assert_eq!(frames[0].header.ack, 42);
        assert_eq!(&frames[0].payload[..], b"x");
    }
}
