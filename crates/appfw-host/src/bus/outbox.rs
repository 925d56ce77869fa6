//! The queue of frames the host writes to one plugin connection, with per-subscription limits.
//!
//! Everything for a plugin (relayed messages and requests, replies, control frames) goes through
//! one FIFO, so frames leave in the order they were queued. Each subscription has its own bound
//! (`max_pending`) and overflow policy inside it; the connection as a whole has a frame and a byte
//! bound for subscription traffic, and a small reserve above that for replies and control frames,
//! so a subscriber that fills its queue never starves its own heartbeats or replies.
//!
//! A plain mutex around a `VecDeque` rather than a channel: dropping a subscription's *oldest*
//! message needs to reach into the queue, and the writer takes everything queued in one swap
//! (one lock per batch, two deques reused forever), so steady state allocates nothing.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use appfw_proto::Frame;
use appfw_proto::writer::FrameSource;
use bytes::Buf;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::metrics::SubscriberStat;

/// Subscription traffic (relayed PUBLISH and REQUEST frames) queued for one connection before
/// its subscriptions' overflow policies apply, whatever their own `max_pending`.
pub const OUTBOX_FRAMES: usize = 1024;
/// Payload bytes of subscription traffic queued for one connection (at least one message is
/// always admitted, however large).
pub const OUTBOX_BYTES: usize = 64 * 1024 * 1024;
/// Room kept above [`OUTBOX_FRAMES`] for replies and control frames (PING, acknowledgements).
pub const CONTROL_RESERVE: usize = 256;

/// What the host does when a subscription's queue is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Overflow {
    /// The publisher waits for room, up to a deadline.
    Block,
    /// The subscription's oldest queued message makes room.
    DropOldest,
    /// The new message is not queued.
    DropNewest,
}

impl Overflow {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Block => "block",
            Self::DropOldest => "drop-oldest",
            Self::DropNewest => "drop-newest",
        }
    }
}

/// One subscription's share of its connection's outbox.
#[derive(Debug)]
pub struct SubQueue {
    /// Its overflow policy.
    pub policy: Overflow,
    /// Its own bound.
    pub max_pending: usize,
    /// Longest wait of a publisher under [`Overflow::Block`].
    pub block_timeout: Duration,
    /// Its frames in the outbox; changed only under the outbox's lock.
    queued: AtomicUsize,
    /// Its counters, shared with the metrics.
    pub stat: Arc<SubscriberStat>,
    /// When a drop was last logged (ms since the Unix epoch), so a flood logs once in a while.
    last_warned_ms: AtomicU64,
}

impl SubQueue {
    /// A queue share with these limits.
    pub fn new(
        policy: Overflow,
        max_pending: usize,
        block_timeout: Duration,
        stat: Arc<SubscriberStat>,
    ) -> Self {
        Self {
            policy,
            max_pending: max_pending.max(1),
            block_timeout,
            queued: AtomicUsize::new(0),
            stat,
            last_warned_ms: AtomicU64::new(0),
        }
    }

    /// Its frames waiting in the outbox.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// `n` more of its frames are queued. Only under the outbox's lock (the one writer of
    /// `queued`), so a load and a store do: no locked read-modify-write per frame.
    fn queued_add(&self, n: usize) {
        self.queued
            .store(self.queued.load(Ordering::Relaxed) + n, Ordering::Relaxed);
    }

    /// `n` of its frames left the outbox (under the outbox's lock, like [`SubQueue::queued_add`]).
    fn queued_sub(&self, n: usize) {
        self.queued
            .store(self.queued.load(Ordering::Relaxed) - n, Ordering::Relaxed);
    }

    /// `n` of its frames left the outbox.
    fn release(&self, n: usize) {
        self.queued_sub(n);
        self.stat.pending.fetch_sub(n as u64, Ordering::Relaxed);
    }

    /// Whether a drop should be logged now (at most once per 10 s per subscription).
    pub fn should_warn(&self) -> bool {
        let now = appfw_proto::now_unix_ms();
        let last = self.last_warned_ms.load(Ordering::Relaxed);
        now.saturating_sub(last) >= 10_000
            && self
                .last_warned_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

struct Queued {
    frame: Frame,
    sub: Option<Arc<SubQueue>>,
}

/// The messages a queued frame carries: a run's (see [`Outbox::offer_run`]), or one.
#[inline(always)]
fn messages(frame: &Frame) -> usize {
    (frame.wire.run_len() as usize).max(1)
}

#[derive(Default)]
struct State {
    q: VecDeque<Queued>,
    /// Subscription traffic in `q`: frames and payload bytes.
    sub_frames: usize,
    sub_bytes: usize,
    closed: bool,
}

/// What became of a run offered to a subscription ([`Outbox::offer_run`]).
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // returned, not stored; boxing would allocate per blocked run
pub enum RunOffer {
    /// Its first `queued` messages were queued, the other `dropped` (only under `drop-newest`)
    /// dropped.
    Taken {
        /// Messages queued.
        queued: u64,
        /// Messages dropped (no room).
        dropped: u64,
    },
    /// The connection's bounds decide: handed back, to be offered message by message.
    Full(Frame),
    /// The connection is closed.
    Closed,
}

/// Why a frame was not queued (it is dropped).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendError {
    /// No room (after waiting, for the waiting calls).
    Full,
    /// The connection's writer is gone.
    Closed,
}

/// What happened to a message offered to a subscription.
#[derive(Debug)]
pub enum Offer {
    /// Queued.
    Queued,
    /// Queued, and `count` of the subscription's oldest queued messages were dropped to make
    /// room, the first of them `first`.
    QueuedDroppedOldest {
        /// The oldest message dropped.
        first: Frame,
        /// How many were dropped (more than one only when the byte bound needs it).
        count: usize,
    },
    /// Not queued: the queue is full and the policy drops the newest.
    Dropped,
    /// Not queued: the queue is full and the policy blocks; the frame is handed back.
    Full(Frame),
    /// Not queued: the connection is closed.
    Closed,
}

/// The sending side, shared by the bus and the connection.
pub struct Outbox {
    state: Mutex<State>,
    /// Wakes the writer.
    ready: Notify,
    /// Wakes senders waiting for room.
    space: Notify,
    /// Senders waiting for room (so the writer only notifies when someone waits).
    waiting: AtomicUsize,
    frames_cap: usize,
    bytes_cap: usize,
    closed: AtomicBool,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("len", &self.len())
            .field("closed", &self.is_closed())
            .finish()
    }
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A connection's outbox with the default bounds, and its receiving end (for the writer task).
pub fn outbox() -> (Arc<Outbox>, OutboxReceiver) {
    outbox_with(OUTBOX_FRAMES, OUTBOX_BYTES)
}

/// An outbox admitting `frames` subscription frames and `bytes` payload bytes.
pub fn outbox_with(frames: usize, bytes: usize) -> (Arc<Outbox>, OutboxReceiver) {
    let o = Arc::new(Outbox {
        state: Mutex::new(State {
            q: VecDeque::with_capacity(frames + CONTROL_RESERVE),
            ..State::default()
        }),
        ready: Notify::new(),
        space: Notify::new(),
        waiting: AtomicUsize::new(0),
        frames_cap: frames.max(1),
        bytes_cap: bytes,
        closed: AtomicBool::new(false),
    });
    let rx = OutboxReceiver {
        outbox: Arc::clone(&o),
        local: VecDeque::with_capacity(frames + CONTROL_RESERVE),
    };
    (o, rx)
}

impl Outbox {
    /// Frames queued (not yet taken by the writer).
    pub fn len(&self) -> usize {
        lock(&self.state).q.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the writer is gone.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    /// Queues a frame; `true` when the queue was empty, so the writer needs a wake-up (it takes
    /// everything at once, so it only needs a nudge for the first).
    // Inlined (like the other steps a frame takes on the relay path): a frame is a few hundred
    // bytes, and each call it is passed to by value would copy it.
    #[inline(always)]
    fn push(&self, st: &mut State, frame: Frame, sub: Option<Arc<SubQueue>>) -> bool {
        if let Some(s) = &sub {
            let n = messages(&frame);
            st.sub_frames += n;
            st.sub_bytes += frame.payload.len();
            s.queued_add(n);
            s.stat.pending.fetch_add(n as u64, Ordering::Relaxed);
        }
        let was_empty = st.q.is_empty();
        st.q.push_back(Queued { frame, sub });
        was_empty
    }

    /// Wakes the writer (it keeps the permit if it is not waiting yet).
    fn wake(&self) {
        self.ready.notify_one();
    }

    /// Queues a reply or control frame if there is room, without waiting.
    pub fn try_send(&self, frame: Frame) -> Result<(), SendError> {
        let mut st = lock(&self.state);
        if st.closed {
            return Err(SendError::Closed);
        }
        if st.q.len() >= self.frames_cap + CONTROL_RESERVE {
            return Err(SendError::Full);
        }
        if self.push(&mut st, frame, None) {
            self.wake();
        }
        Ok(())
    }

    /// Queues a reply or control frame, waiting up to `wait` for room.
    pub async fn send(&self, frame: Frame, wait: Duration) -> Result<(), SendError> {
        let until = Instant::now() + wait;
        let _waiting = Waiting::new(&self.waiting);
        loop {
            let notified = self.space.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut st = lock(&self.state);
                if st.closed {
                    return Err(SendError::Closed);
                }
                if st.q.len() < self.frames_cap + CONTROL_RESERVE {
                    if self.push(&mut st, frame, None) {
                        self.wake();
                    }
                    return Ok(());
                }
            }
            if tokio::time::timeout_at(until, notified).await.is_err() {
                return self.try_send(frame);
            }
        }
    }

    /// Offers a message of subscription `sub`, without waiting. `evict` allows dropping the
    /// subscription's oldest message under [`Overflow::DropOldest`] (requests are never evicted:
    /// every request must be answered, and the new one can be answered at once).
    pub fn offer(&self, frame: Frame, sub: &Arc<SubQueue>, evict: bool) -> Offer {
        let (offer, wake) = self.offer_quiet(frame, sub, evict);
        if wake {
            self.wake();
        }
        offer
    }

    /// [`Outbox::offer`] that leaves the writer's wake-up to `wakes` (see [`Wakes`]).
    #[inline(always)]
    pub fn offer_deferred(
        self: &Arc<Self>,
        frame: Frame,
        sub: &Arc<SubQueue>,
        evict: bool,
        wakes: &mut Wakes,
    ) -> Offer {
        let (offer, wake) = self.offer_quiet(frame, sub, evict);
        if wake {
            wakes.add(self);
        }
        offer
    }

    /// Offers without waking the writer; `true` when it needs a wake-up.
    #[inline(always)]
    fn offer_quiet(&self, frame: Frame, sub: &Arc<SubQueue>, evict: bool) -> (Offer, bool) {
        let mut st = lock(&self.state);
        if st.closed {
            return (Offer::Closed, false);
        }
        let len = frame.payload.len();
        let fits = |st: &State| {
            sub.queued() < sub.max_pending
                && st.sub_frames < self.frames_cap
                && (st.sub_frames == 0 || st.sub_bytes + len <= self.bytes_cap)
        };
        if fits(&st) {
            let wake = self.push(&mut st, frame, Some(Arc::clone(sub)));
            return (Offer::Queued, wake);
        }
        match sub.policy {
            Overflow::Block => (Offer::Full(frame), false),
            Overflow::DropOldest if evict => {
                // Make room by removing this subscription's oldest frames (usually at the front).
                let mut first = None;
                let mut count = 0;
                while !fits(&st) {
                    let Some(i) =
                        st.q.iter()
                            .position(|q| q.sub.as_ref().is_some_and(|s| Arc::ptr_eq(s, sub)))
                    else {
                        // The queue is full of other subscriptions' messages: nothing of ours
                        // to drop, so the new one goes.
                        return (Offer::Dropped, false);
                    };
                    // The oldest message of a run is its first frame: cut off its front.
                    if let Some(run) = st.q.get_mut(i).filter(|q| messages(&q.frame) > 1) {
                        let old = Self::run_pop_front(&mut run.frame);
                        st.sub_frames -= 1;
                        st.sub_bytes -= old;
                        sub.queued_sub(1);
                        sub.stat.pending.fetch_sub(1, Ordering::Relaxed);
                        count += 1;
                        if first.is_none() {
                            first = st.q.get(i).map(|q| Frame {
                                header: q.frame.header.clone(),
                                ..Frame::default()
                            });
                        }
                    } else if let Some(old) = st.q.remove(i) {
                        Self::forget(&mut st, &old);
                        count += 1;
                        first.get_or_insert(old.frame);
                    }
                }
                let wake = self.push(&mut st, frame, Some(Arc::clone(sub)));
                let offer = match first {
                    Some(first) => Offer::QueuedDroppedOldest { first, count },
                    None => Offer::Queued,
                };
                (offer, wake)
            }
            Overflow::DropOldest | Overflow::DropNewest => (Offer::Dropped, false),
        }
    }

    /// Offers like [`Outbox::offer`], and under [`Overflow::Block`] waits for room until
    /// `until`; a frame still without room then is handed back as [`Offer::Full`].
    pub async fn offer_until(
        &self,
        frame: Frame,
        sub: &Arc<SubQueue>,
        evict: bool,
        until: Instant,
    ) -> Offer {
        let mut frame = frame;
        let _waiting = Waiting::new(&self.waiting);
        loop {
            let notified = self.space.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.offer(frame, sub, evict) {
                Offer::Full(f) => frame = f,
                other => return other,
            }
            if tokio::time::timeout_at(until, notified).await.is_err() {
                return self.offer(frame, sub, evict);
            }
        }
    }

    fn forget(st: &mut State, q: &Queued) {
        if let Some(s) = &q.sub {
            let n = messages(&q.frame);
            st.sub_frames -= n;
            st.sub_bytes -= q.frame.payload.len();
            s.queued_sub(n);
            s.stat.pending.fetch_sub(n as u64, Ordering::Relaxed);
        }
    }

    /// Removes the first message of a run of two or more; its bytes.
    fn run_pop_front(run: &mut Frame) -> usize {
        let len = appfw_proto::run::frames_len(&run.payload, 1);
        run.payload.advance(len);
        run.wire.set_run_len(run.wire.run_len() - 1);
        len
    }

    /// How many more messages `sub` may queue now (`usize::MAX` once the writer is gone: an
    /// offer then reports [`Offer::Closed`]).
    pub fn room(&self, sub: &SubQueue) -> usize {
        let st = lock(&self.state);
        if st.closed {
            return usize::MAX;
        }
        let own = sub.max_pending.saturating_sub(sub.queued());
        own.min(self.frames_cap.saturating_sub(st.sub_frames))
    }

    /// Offers a run of messages of subscription `sub` (a frame marked with
    /// [`WireHeader::run`]) without waiting: queued whole if every one of them has room. A
    /// `drop-newest` subscription without room for all of them takes the first ones it has room
    /// for (the run cut after them) and drops the rest, which is what offering them one by one
    /// would do. Otherwise (another policy, or the connection's own bounds, shared with its
    /// other subscriptions, would decide) it is handed back as [`RunOffer::Full`], and the
    /// caller offers its messages one by one, so the policy applies to each exactly as it would
    /// have. The writer's wake-up is left to `wakes`.
    pub fn offer_run(
        self: &Arc<Self>,
        mut run: Frame,
        sub: &Arc<SubQueue>,
        wakes: &mut Wakes,
    ) -> RunOffer {
        let mut st = lock(&self.state);
        if st.closed {
            return RunOffer::Closed;
        }
        let n = messages(&run);
        let connection_fits = st.sub_frames + n <= self.frames_cap
            && (st.sub_frames == 0 || st.sub_bytes + run.payload.len() <= self.bytes_cap);
        let room = sub.max_pending.saturating_sub(sub.queued());
        let take = match sub.policy {
            _ if !connection_fits => return RunOffer::Full(run),
            Overflow::DropNewest => room.min(n),
            _ if room < n => return RunOffer::Full(run),
            _ => n,
        };
        if take < n {
            run.payload
                .truncate(appfw_proto::run::frames_len(&run.payload, take));
            run.wire.set_run_len(take as u32);
        }
        if take > 0 && self.push(&mut st, run, Some(Arc::clone(sub))) {
            wakes.add(self);
        }
        RunOffer::Taken {
            queued: take as u64,
            dropped: (n - take) as u64,
        }
    }

    fn close(&self) {
        let drained = {
            let mut st = lock(&self.state);
            st.closed = true;
            let q = std::mem::take(&mut st.q);
            for item in &q {
                Self::forget(&mut st, item);
            }
            q
        };
        self.closed.store(true, Ordering::Relaxed);
        self.space.notify_waiters();
        // Dropped outside the lock: frames may hold the last reference to large buffers.
        drop(drained);
    }
}

/// How many writers one [`Wakes`] holds back; the ones after that are woken at once.
const DEFERRED_WAKES: usize = 16;

/// The writers a connection's reader filled while it routed one batch of frames, woken together
/// when the batch is done (or dropped): a burst of messages read in one go costs each writer one
/// wake-up and goes out in one write, instead of the writer racing the reader frame by frame.
/// Bounded, and nothing to allocate: the first [`DEFERRED_WAKES`] writers wait for the end of
/// the batch, others are woken at once.
#[derive(Default)]
pub struct Wakes {
    held: [Option<Arc<Outbox>>; DEFERRED_WAKES],
    len: usize,
}

impl std::fmt::Debug for Wakes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wakes").field("len", &self.len).finish()
    }
}

impl Wakes {
    /// Nothing held.
    pub fn new() -> Self {
        Self::default()
    }

    fn add(&mut self, o: &Arc<Outbox>) {
        let held = &self.held[..self.len];
        if held.iter().flatten().any(|h| Arc::ptr_eq(h, o)) {
            return;
        }
        match self.held.get_mut(self.len) {
            Some(slot) => {
                *slot = Some(Arc::clone(o));
                self.len += 1;
            }
            None => o.wake(),
        }
    }

    /// Wakes every writer held.
    pub fn wake_all(&mut self) {
        for slot in &mut self.held[..self.len] {
            if let Some(o) = slot.take() {
                o.wake();
            }
        }
        self.len = 0;
    }
}

impl Drop for Wakes {
    fn drop(&mut self) {
        self.wake_all();
    }
}

/// Counts a sender in [`Outbox::waiting`] from before its first look at the queue (so the
/// writer, which reads the count after taking frames, cannot miss it) until it returns.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(n: &'a AtomicUsize) -> Self {
        n.fetch_add(1, Ordering::SeqCst);
        Self(n)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The writer's end. Dropping it closes the outbox (senders get `Closed`, waiters wake).
pub struct OutboxReceiver {
    outbox: Arc<Outbox>,
    /// The batch taken in the last swap.
    local: VecDeque<Queued>,
}

impl std::fmt::Debug for OutboxReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboxReceiver")
            .field("local", &self.local.len())
            .finish()
    }
}

impl OutboxReceiver {
    /// Takes the next frame without waiting. It may be a run of messages
    /// ([`WireHeader::run`]), which `appfw_proto::writer` writes as its messages.
    #[inline(always)]
    pub fn try_recv(&mut self) -> Option<Frame> {
        if self.local.is_empty() && !self.refill() {
            return None;
        }
        self.local.pop_front().map(|q| q.frame)
    }

    /// Lends the queued frames to `f` where they lie, in order, while it takes them, and drops
    /// the ones it took: the writer encodes a batch without moving each frame out of the queue.
    pub fn take_in_place(&mut self, f: &mut dyn FnMut(&mut Frame) -> bool) -> usize {
        if self.local.is_empty() && !self.refill() {
            return 0;
        }
        let mut taken = 0;
        for q in &mut self.local {
            if !f(&mut q.frame) {
                break;
            }
            taken += 1;
        }
        self.local.drain(..taken);
        taken
    }

    /// Swaps the outbox's queue in (`local` is empty); `false` if there was nothing.
    #[inline(always)]
    fn refill(&mut self) -> bool {
        let o = &self.outbox;
        let mut st = lock(&o.state);
        if st.q.is_empty() {
            return false;
        }
        std::mem::swap(&mut st.q, &mut self.local);
        // One subtraction per run of frames of the same subscription (usually the whole
        // batch), not two atomics per frame.
        let mut run: Option<(&Arc<SubQueue>, usize)> = None;
        for (s, frame) in self
            .local
            .iter()
            .filter_map(|item| Some((item.sub.as_ref()?, &item.frame)))
        {
            match &mut run {
                Some((r, n)) if Arc::ptr_eq(r, s) => *n += messages(frame),
                _ => {
                    if let Some((r, n)) = run.replace((s, messages(frame))) {
                        r.release(n);
                    }
                }
            }
        }
        if let Some((r, n)) = run {
            r.release(n);
        }
        st.sub_frames = 0;
        st.sub_bytes = 0;
        drop(st);
        if o.waiting.load(Ordering::SeqCst) > 0 {
            o.space.notify_waiters();
        }
        true
    }

    /// Waits for the next frame. Never ends on its own: the writer stops on cancellation.
    pub async fn recv(&mut self) -> Option<Frame> {
        loop {
            if let Some(f) = self.try_recv() {
                return Some(f);
            }
            // notify_one keeps a permit when the writer is not waiting yet: no lost wake-up.
            self.outbox.ready.notified().await;
        }
    }
}

impl FrameSource for OutboxReceiver {
    async fn next_frame(&mut self) -> Option<Frame> {
        self.recv().await
    }

    fn try_next_frame(&mut self) -> Option<Frame> {
        self.try_recv()
    }

    fn take_in_place(&mut self, f: &mut dyn FnMut(&mut Frame) -> bool) -> usize {
        OutboxReceiver::take_in_place(self, f)
    }
}

impl Drop for OutboxReceiver {
    fn drop(&mut self) {
        self.outbox.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use appfw_proto::pb::FrameType;
    use bytes::Bytes;

    fn msg(n: usize) -> Frame {
        Frame::new(FrameType::Publish, Bytes::from(n.to_string()))
    }

    fn sub(policy: Overflow, max: usize) -> Arc<SubQueue> {
        Arc::new(SubQueue::new(
            policy,
            max,
            Duration::from_millis(50),
            Arc::default(),
        ))
    }

    fn drain(rx: &mut OutboxReceiver) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(f) = rx.try_recv() {
            out.push(String::from_utf8_lossy(&f.payload).into_owned());
        }
        out
    }

    #[test]
    fn drop_oldest_keeps_the_newest_and_leaves_other_subscriptions_alone() {
        let (o, mut rx) = outbox_with(100, 1 << 20);
        let a = sub(Overflow::DropOldest, 3);
        let b = sub(Overflow::DropNewest, 3);
        for i in 0..5 {
            o.offer(msg(i), &a, true);
            o.offer(msg(10 + i), &b, true);
        }
        assert_eq!(a.queued(), 3);
        assert_eq!(b.queued(), 3);
        assert_eq!(a.stat.pending.load(Ordering::Relaxed), 3);
        assert_eq!(drain(&mut rx), ["10", "11", "2", "12", "3", "4"]);
        assert_eq!(a.queued(), 0);
        assert_eq!(b.stat.pending.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn control_frames_have_room_beyond_a_full_subscription_queue() {
        let (o, mut rx) = outbox_with(2, 1 << 20);
        let a = sub(Overflow::Block, 10);
        assert!(matches!(o.offer(msg(0), &a, true), Offer::Queued));
        assert!(matches!(o.offer(msg(1), &a, true), Offer::Queued));
        assert!(matches!(o.offer(msg(2), &a, true), Offer::Full(_)));
        assert!(
            o.try_send(msg(99)).is_ok(),
            "the reserve takes control frames"
        );
        assert_eq!(drain(&mut rx), ["0", "1", "99"]);
    }

    #[test]
    fn the_byte_bound_admits_one_large_message_at_a_time() {
        let (o, _rx) = outbox_with(100, 10);
        let a = sub(Overflow::DropNewest, 10);
        let big = Frame::new(FrameType::Publish, Bytes::from(vec![0u8; 50]));
        assert!(matches!(o.offer(big.clone(), &a, true), Offer::Queued));
        assert!(matches!(o.offer(big, &a, true), Offer::Dropped));
    }

    #[tokio::test]
    async fn a_blocked_sender_gets_room_when_the_writer_takes_frames_or_gives_up_at_its_deadline() {
        let (o, mut rx) = outbox_with(100, 1 << 20);
        let a = sub(Overflow::Block, 1);
        assert!(matches!(o.offer(msg(0), &a, true), Offer::Queued));
        let until = Instant::now() + Duration::from_millis(30);
        assert!(matches!(
            o.offer_until(msg(1), &a, true, until).await,
            Offer::Full(_)
        ));
        let o2 = Arc::clone(&o);
        let a2 = Arc::clone(&a);
        let waiter = tokio::spawn(async move {
            let until = Instant::now() + Duration::from_secs(10);
            matches!(
                o2.offer_until(msg(2), &a2, true, until).await,
                Offer::Queued
            )
        });
        // The waiter is woken by the writer's swap, however long that takes to happen here.
        while o.waiting.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!(rx.recv().await.map(|f| f.payload), Some(Bytes::from("0")));
        assert!(waiter.await.unwrap());
        assert_eq!(drain(&mut rx), ["2"]);
    }

    #[test]
    fn a_deferred_offer_wakes_the_writer_only_when_the_batch_is_done() {
        use futures_util::FutureExt;
        let (o, mut rx) = outbox_with(100, 1 << 20);
        let a = sub(Overflow::Block, 10);
        let mut wakes = Wakes::new();
        {
            let recv = rx.recv();
            tokio::pin!(recv);
            assert!(recv.as_mut().now_or_never().is_none(), "nothing queued yet");
            assert!(matches!(
                o.offer_deferred(msg(1), &a, true, &mut wakes),
                Offer::Queued
            ));
            assert!(matches!(
                o.offer_deferred(msg(2), &a, true, &mut wakes),
                Offer::Queued
            ));
            assert!(
                recv.as_mut().now_or_never().is_none(),
                "the writer sleeps until the batch is routed"
            );
            wakes.wake_all();
            let got = recv.as_mut().now_or_never().flatten().map(|f| f.payload);
            assert_eq!(got, Some(Bytes::from("1")));
        }
        assert_eq!(drain(&mut rx), ["2"]);
        // A dropped batch wakes its writers too.
        {
            let recv = rx.recv();
            tokio::pin!(recv);
            assert!(recv.as_mut().now_or_never().is_none());
            let mut wakes = Wakes::new();
            assert!(matches!(
                o.offer_deferred(msg(3), &a, true, &mut wakes),
                Offer::Queued
            ));
            drop(wakes);
            let got = recv.as_mut().now_or_never().flatten().map(|f| f.payload);
            assert_eq!(got, Some(Bytes::from("3")));
        }
    }

    #[tokio::test]
    async fn dropping_the_receiver_closes_and_releases_everything() {
        let (o, rx) = outbox_with(100, 1 << 20);
        let a = sub(Overflow::Block, 1);
        assert!(matches!(o.offer(msg(0), &a, true), Offer::Queued));
        drop(rx);
        assert!(o.is_closed());
        assert_eq!(a.queued(), 0);
        assert!(matches!(o.offer(msg(1), &a, true), Offer::Closed));
        assert_eq!(o.try_send(msg(2)), Err(SendError::Closed));
    }
}
