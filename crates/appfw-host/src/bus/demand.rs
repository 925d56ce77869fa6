//! On-demand plugins as the bus sees them: the topics each one declares, and, while it is not
//! running, a bounded queue of what arrived for it.
//!
//! A plugin's [`Demand`] is `live` once its process runs and has subscribed: from then on its
//! subscriptions are routed like anyone's (lock-free; a delivery only stamps its activity
//! clock). Until then, everything for it goes through the demand's lock: messages on a declared
//! topic are queued and wake the plugin's owner task, and each SUBSCRIBE of the new process
//! delivers, in arrival order, the queued messages it matches. Queued requests are in the
//! pending table from the start (with no server), so their deadline runs as usual.
//!
//! The owner task sets the mode from the plugin's state; only it starts or stops the process.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use appfw_proto::Frame;
use appfw_proto::pb::{ErrorKind, SubscriptionKind};
use arc_swap::ArcSwap;
use serde::Serialize;
use tokio::sync::Notify;

use super::{Bus, Link, NO_SERVER, Pattern, PendingReq, Sub, Table, error, lock, no_responders};
use crate::metrics::DemandCounters;

/// What the bus does with traffic for an on-demand plugin that is not live.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Mode {
    /// No process (idle, backing off, stopping): queue, and wake the owner task.
    Cold,
    /// A process was started: queue until it subscribes (its connection is adopted then).
    Starting,
    /// Running and subscribed: routed like any plugin.
    Live,
    /// Held by an operator, or failed: requests get this error at once.
    Refusing { code: &'static str, message: String },
}

/// Something that arrived while the plugin was not live.
enum Held {
    Publish(Frame),
    /// Already in the pending table under `host_id`, with no server yet.
    Request {
        host_id: u64,
        frame: Frame,
    },
}

impl Held {
    fn topic(&self) -> &str {
        match self {
            Self::Publish(f) | Self::Request { frame: f, .. } => &f.header.topic,
        }
    }
}

struct State {
    mode: Mode,
    queue: VecDeque<Held>,
    cap: usize,
    /// The connection of the process started for the demand (adopted at its first SUBSCRIBE).
    conn: Option<u64>,
    /// The first message since the plugin went cold, and when it came: why it is started, and
    /// the start of its cold-start latency.
    trigger: Option<(String, Instant)>,
}

/// One on-demand plugin. Lives as long as the plugin is on-demand in the running config.
pub struct Demand {
    plugin: Arc<str>,
    patterns: ArcSwap<Vec<Pattern>>,
    live: AtomicBool,
    base: Instant,
    /// Milliseconds after `base` of the last message or request routed to it.
    last_activity: AtomicU64,
    wake: Notify,
    counters: Arc<DemandCounters>,
    state: Mutex<State>,
}

impl std::fmt::Debug for Demand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Demand({})", self.plugin)
    }
}

/// What status shows of an on-demand plugin.
#[derive(Clone, Debug, Serialize)]
pub struct DemandStatus {
    /// Topic patterns it serves.
    pub topics: Vec<String>,
    /// Messages and requests waiting for it to start.
    pub queued: usize,
    /// Starts caused by demand since the host started.
    pub demand_starts: u64,
    /// The last cold start: from the message that woke it to that message's delivery, ms.
    pub last_cold_start_ms: Option<f64>,
    /// Time since a message or request was last routed to it, ms.
    pub idle_ms: u64,
}

fn parse_all(plugin: &str, topics: &[String]) -> Vec<Pattern> {
    topics
        .iter()
        .filter_map(|t| match Pattern::parse(t) {
            Ok(p) => Some(p),
            Err(e) => {
                // Validation refuses these; a pattern that slips through only matches nothing.
                tracing::warn!(plugin, "ignoring on-demand topic: {e}");
                None
            }
        })
        .collect()
}

impl Demand {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The plugin's name.
    pub fn plugin_name(&self) -> &str {
        &self.plugin
    }

    /// Whether its subscriptions are routed normally.
    pub fn is_live(&self) -> bool {
        self.live.load(Ordering::Acquire)
    }

    pub(super) fn declares(&self, topic: &str) -> bool {
        self.patterns.load().iter().any(|p| p.matches(topic))
    }

    /// Records traffic routed to it (the idle clock).
    pub fn touch(&self) {
        let ms = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_activity.store(ms, Ordering::Relaxed);
    }

    /// Time since traffic was last routed to it.
    pub fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_activity.load(Ordering::Relaxed));
        self.base.elapsed().saturating_sub(last)
    }

    /// Notified when a message for it arrives while it is cold.
    pub fn wake(&self) -> &Notify {
        &self.wake
    }

    /// The topic of the message that woke it, and how many wait, if any wait.
    pub fn pending_demand(&self) -> Option<(String, usize)> {
        let st = self.lock();
        if st.queue.is_empty() {
            return None;
        }
        let topic = st
            .trigger
            .as_ref()
            .map_or_else(|| st.queue[0].topic().to_string(), |(t, _)| t.clone());
        Some((topic, st.queue.len()))
    }

    /// Its counters.
    pub fn counters(&self) -> &DemandCounters {
        &self.counters
    }

    /// What status shows.
    pub fn status(&self) -> DemandStatus {
        let queued = self.lock().queue.len();
        let last = self.counters.last_cold_start_ns.load(Ordering::Relaxed);
        DemandStatus {
            topics: self
                .patterns
                .load()
                .iter()
                .map(|p| p.as_str().to_string())
                .collect(),
            queued,
            demand_starts: self.counters.starts.load(Ordering::Relaxed),
            last_cold_start_ms: (last > 0).then(|| last as f64 / 1e6),
            idle_ms: u64::try_from(self.idle_for().as_millis()).unwrap_or(u64::MAX),
        }
    }

    fn set_mode(&self, st: &mut State, mode: Mode) {
        self.live.store(mode == Mode::Live, Ordering::Release);
        st.mode = mode;
    }
}

/// Whether every declared pattern is covered by a subscription of `conn`: nothing it declares
/// can still be waiting for a SUBSCRIBE.
fn covered(d: &Demand, subs: &[&Arc<Sub>]) -> bool {
    d.patterns
        .load()
        .iter()
        .all(|p| subs.iter().any(|s| s.pattern.covers(p)))
}

impl Bus {
    /// Declares `plugin` on-demand with `topics` and a queue of `cap` (or, with `None`, not
    /// on-demand any more: what waits for it is refused). Returns its demand, the same one for
    /// the plugin's whole life as an on-demand plugin; a new one starts `Cold`.
    pub fn declare(&self, plugin: &str, spec: Option<(&[String], usize)>) -> Option<Arc<Demand>> {
        let mut removed = None;
        let mut out = None;
        self.edit_table(|t| {
            let at = t.demands.iter().position(|d| &*d.plugin == plugin);
            match (spec, at) {
                // Retuned below, outside the table's edit lock: a SUBSCRIBE takes the demand's
                // lock first, then that one.
                (Some(_), Some(i)) => out = Some(Arc::clone(&t.demands[i])),
                (Some((topics, cap)), None) => {
                    let d = Arc::new(Demand {
                        plugin: Arc::from(plugin),
                        patterns: ArcSwap::from_pointee(parse_all(plugin, topics)),
                        live: AtomicBool::new(false),
                        base: Instant::now(),
                        last_activity: AtomicU64::new(0),
                        wake: Notify::new(),
                        counters: self.inner.metrics.demand_counters(plugin),
                        state: Mutex::new(State {
                            mode: Mode::Cold,
                            queue: VecDeque::new(),
                            cap,
                            conn: None,
                            trigger: None,
                        }),
                    });
                    t.demands.push(Arc::clone(&d));
                    out = Some(d);
                }
                (None, Some(i)) => removed = Some(t.demands.remove(i)),
                (None, None) => {}
            }
            relink(t);
        });
        if let (Some(d), Some((topics, cap))) = (&out, spec) {
            d.patterns.store(Arc::new(parse_all(plugin, topics)));
            d.lock().cap = cap;
            // Cached routes were made with the old patterns (a route is cached only for topics
            // no on-demand plugin declares): they are stale now.
            self.inner.generation.fetch_add(1, Ordering::Release);
        }
        if let Some(d) = removed {
            self.demand_refuse(
                &d,
                "no_responders",
                format!("{plugin} is no longer an on-demand plugin"),
            );
        }
        out
    }

    /// The plugin has no process (idle, backing off, stopping): traffic waits for the next one.
    pub fn demand_cold(&self, d: &Demand) {
        let mut st = d.lock();
        st.conn = None;
        d.set_mode(&mut st, Mode::Cold);
    }

    /// A process was started: its first SUBSCRIBE adopts its connection.
    pub fn demand_starting(&self, d: &Demand) {
        let mut st = d.lock();
        st.conn = None;
        d.set_mode(&mut st, Mode::Starting);
    }

    /// The plugin runs on connection `conn` and has subscribed (it was already running when it
    /// became on-demand).
    pub fn demand_live(&self, d: &Demand, conn: u64) {
        let held: Vec<Held> = {
            let mut st = d.lock();
            st.conn = Some(conn);
            // Anything held between the declaration and now goes out first.
            self.flush(d, &mut st, conn);
            st.trigger = None;
            d.set_mode(&mut st, Mode::Live);
            st.queue.drain(..).collect()
        };
        let message = format!("{} does not serve this topic", d.plugin);
        self.drop_held(d, held, "no_responders", &message);
    }

    /// The plugin is held stopped or failed: requests for it get `code` at once, what waits is
    /// refused (requests) or dropped (messages, counted).
    pub fn demand_refuse(&self, d: &Demand, code: &'static str, message: String) {
        let held: Vec<Held> = {
            let mut st = d.lock();
            st.conn = None;
            st.trigger = None;
            d.set_mode(
                &mut st,
                Mode::Refusing {
                    code,
                    message: message.clone(),
                },
            );
            st.queue.drain(..).collect()
        };
        self.drop_held(d, held, code, &message);
    }

    /// The process has had its time to subscribe: what no subscription of it took is dropped
    /// (messages, counted) or refused (requests), and it is routed normally from now on.
    pub fn demand_settle(&self, d: &Demand) {
        let held: Vec<Held> = {
            let mut st = d.lock();
            if st.mode != Mode::Starting {
                return;
            }
            st.trigger = None;
            d.set_mode(&mut st, Mode::Live);
            st.queue.drain(..).collect()
        };
        if !held.is_empty() {
            tracing::warn!(plugin = %d.plugin, "{} queued messages on topics the plugin declares but never subscribed to: dropped", held.len());
        }
        let message = format!("{} started but does not serve this topic", d.plugin);
        self.drop_held(d, held, "no_responders", &message);
    }

    fn drop_held(&self, d: &Demand, held: Vec<Held>, code: &'static str, message: &str) {
        for h in held {
            match h {
                Held::Publish(_) => {
                    d.counters.dropped.fetch_add(1, Ordering::Relaxed);
                    self.inner.stats.dropped.fetch_add(1, Ordering::Relaxed);
                }
                Held::Request { host_id, .. } => {
                    if let Some(r) = self.take_pending(host_id) {
                        let e = error(ErrorKind::Temporary, code, message);
                        self.reply_error_now(&r.origin, r.origin_id, &d.plugin, e);
                    }
                }
            }
        }
    }

    /// Requests being served on connection `conn` (an idle stop waits for them).
    pub fn serving(&self, conn: u64) -> usize {
        lock(&self.inner.pending)
            .by_id
            .values()
            .filter(|r| r.server_conn == conn)
            .count()
    }

    /// A PUBLISH for a demand that was not live when routing began.
    pub(super) fn demand_publish(&self, d: &Demand, frame: &Frame) {
        let topic: &str = &frame.header.topic;
        let mut st = d.lock();
        // Delivered at once only to the adopted connection: a stopping process gets nothing new.
        if let (Mode::Starting | Mode::Live, Some(conn)) = (&st.mode, st.conn) {
            let table = self.inner.table.load();
            let mut any = false;
            for s in table.subs.iter().filter(|s| {
                s.link.conn_id == conn
                    && s.kind == SubscriptionKind::Events
                    && s.pattern.matches(topic)
            }) {
                any = true;
                let mut out = frame.clone();
                out.header.subscription_id = s.id;
                self.try_deliver(&s.link, out);
            }
            if any {
                d.touch();
                return;
            }
        }
        if !matches!(st.mode, Mode::Cold | Mode::Starting) || !d.declares(topic) {
            return;
        }
        if st.queue.len() >= st.cap {
            d.counters.dropped.fetch_add(1, Ordering::Relaxed);
            self.inner.stats.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(plugin = %d.plugin, topic, "on-demand queue full: message dropped");
            return;
        }
        st.queue.push_back(Held::Publish(frame.clone()));
        Self::woken(d, &mut st, topic);
    }

    fn woken(d: &Demand, st: &mut State, topic: &str) {
        if st.trigger.is_none() {
            st.trigger = Some((topic.to_string(), Instant::now()));
            d.wake.notify_one();
        }
    }

    /// The demand a REQUEST with no live server goes to: one not live that declares the topic
    /// (or has a subscription for it), preferring one that is not refusing.
    pub(super) fn demand_for<'a>(&self, table: &'a Table, topic: &str) -> Option<&'a Arc<Demand>> {
        let mut fallback = None;
        for d in table.demands.iter().filter(|d| !d.is_live()) {
            let subscribed = || {
                table.subs.iter().any(|s| {
                    s.link.plugin == d.plugin
                        && s.kind == SubscriptionKind::Requests
                        && s.pattern.matches(topic)
                })
            };
            if !d.declares(topic) && !subscribed() {
                continue;
            }
            if matches!(d.lock().mode, Mode::Refusing { .. }) {
                fallback.get_or_insert(d);
            } else {
                return Some(d);
            }
        }
        fallback
    }

    /// A REQUEST (already stamped with `host_id` and its deadline) for a demand that was not
    /// live: delivered to the new process if it serves the topic already, queued otherwise;
    /// refused when the plugin is held or failed, or its queue is full.
    pub(super) fn demand_request(
        &self,
        d: &Demand,
        from: &Arc<Link>,
        req: PendingReq,
        frame: Frame,
    ) {
        let topic = frame.header.topic.clone();
        let host_id = frame.header.request_id;
        let origin_id = req.origin_id;
        let refused = {
            let mut st = d.lock();
            let server = match (&st.mode, st.conn) {
                (Mode::Starting | Mode::Live, Some(conn)) => {
                    let table = self.inner.table.load();
                    table
                        .subs
                        .iter()
                        .find(|s| {
                            s.link.conn_id == conn
                                && s.kind == SubscriptionKind::Requests
                                && s.pattern.matches(&topic)
                        })
                        .cloned()
                }
                _ => None,
            };
            match (&st.mode, server) {
                (_, Some(server)) => {
                    self.add_pending(
                        host_id,
                        PendingReq {
                            server_conn: server.link.conn_id,
                            ..req
                        },
                    );
                    let mut out = frame;
                    out.header.subscription_id = server.id;
                    self.inner.stats.requests.fetch_add(1, Ordering::Relaxed);
                    d.touch();
                    self.try_deliver(&server.link, out);
                    None
                }
                (Mode::Refusing { code, message }, None) => {
                    Some(error(ErrorKind::Temporary, code, message.clone()))
                }
                (Mode::Live, None) => Some(no_responders(&topic)),
                (Mode::Cold | Mode::Starting, None) if st.queue.len() >= st.cap => Some(error(
                    ErrorKind::Temporary,
                    "overloaded",
                    format!(
                        "{} is starting and already holds {} messages (on_demand_queue); retry later",
                        d.plugin, st.cap
                    ),
                )),
                (Mode::Cold | Mode::Starting, None) => {
                    self.add_pending(
                        host_id,
                        PendingReq {
                            server_conn: NO_SERVER,
                            ..req
                        },
                    );
                    self.inner.stats.requests.fetch_add(1, Ordering::Relaxed);
                    st.queue.push_back(Held::Request { host_id, frame });
                    Self::woken(d, &mut st, &topic);
                    None
                }
            }
        };
        if let Some(e) = refused {
            self.reply_error_now(from, origin_id, super::HOST_SENDER, e);
        }
    }

    /// A SUBSCRIBE of `link`, whose plugin has demand `d`: `add` puts the subscription in the
    /// table under the demand's lock, so no message routed meanwhile can overtake the queued ones.
    /// Then, for a starting process: adopts its connection, delivers in order what waits and it
    /// now matches, and makes the demand live once everything it declares is subscribed and
    /// nothing waits.
    pub(super) fn demand_subscribe(&self, d: &Demand, link: &Link, add: impl FnOnce()) {
        let mut st = d.lock();
        add();
        if st.mode != Mode::Starting {
            return;
        }
        st.conn = Some(link.conn_id);
        let covered = self.flush(d, &mut st, link.conn_id);
        if st.queue.is_empty() && covered {
            st.trigger = None;
            d.set_mode(&mut st, Mode::Live);
        }
    }

    /// Delivers, in arrival order, what waits and a subscription of `conn` now matches (the rest
    /// keeps waiting); true when every declared pattern is covered by its subscriptions.
    fn flush(&self, d: &Demand, st: &mut State, conn: u64) -> bool {
        let table = self.inner.table.load();
        let subs: Vec<&Arc<Sub>> = table
            .subs
            .iter()
            .filter(|s| s.link.conn_id == conn)
            .collect();
        let mut kept = VecDeque::with_capacity(st.queue.len());
        let mut delivered = false;
        for h in st.queue.drain(..) {
            match h {
                Held::Publish(f) => {
                    let mut any = false;
                    for s in subs.iter().filter(|s| {
                        s.kind == SubscriptionKind::Events && s.pattern.matches(&f.header.topic)
                    }) {
                        any = true;
                        let mut out = f.clone();
                        out.header.subscription_id = s.id;
                        self.try_deliver(&s.link, out);
                    }
                    if any {
                        delivered = true;
                    } else {
                        kept.push_back(Held::Publish(f));
                    }
                }
                Held::Request { host_id, frame } => {
                    let Some(s) = subs.iter().find(|s| {
                        s.kind == SubscriptionKind::Requests
                            && s.pattern.matches(&frame.header.topic)
                    }) else {
                        kept.push_back(Held::Request { host_id, frame });
                        continue;
                    };
                    // Expired (answered by the expiry task) or its requester left: skip it.
                    let still_pending = match lock(&self.inner.pending).by_id.get_mut(&host_id) {
                        Some(r) => {
                            r.server_conn = conn;
                            true
                        }
                        None => false,
                    };
                    if still_pending {
                        let mut out = frame;
                        out.header.subscription_id = s.id;
                        self.try_deliver(&s.link, out);
                        delivered = true;
                    }
                }
            }
        }
        st.queue = kept;
        if delivered {
            d.touch();
            if let Some((_, at)) = st.trigger.take() {
                let took = at.elapsed();
                d.counters.cold_start.observe(took);
                d.counters.last_cold_start_ns.store(
                    u64::try_from(took.as_nanos()).unwrap_or(u64::MAX),
                    Ordering::Relaxed,
                );
                tracing::info!(plugin = %d.plugin, cold_start_ms = took.as_secs_f64() * 1000.0, "on-demand plugin took its first message {:.1} ms after it arrived", took.as_secs_f64() * 1000.0);
            }
        }
        covered(d, &subs)
    }

    /// The connection `link` closed: the demand stops delivering to it.
    pub(super) fn demand_disconnected(&self, d: &Demand, link: &Link) {
        let mut st = d.lock();
        if st.conn == Some(link.conn_id) {
            st.conn = None;
            if matches!(st.mode, Mode::Live | Mode::Starting) {
                d.set_mode(&mut st, Mode::Cold);
            }
        }
    }
}

/// Points every subscription of an on-demand plugin at its demand (by index in this table), and
/// the others at none.
pub(super) fn relink(t: &mut Table) {
    let demands = &t.demands;
    t.subs = t
        .subs
        .iter()
        .map(|s| {
            let demand = demands
                .iter()
                .position(|d| d.plugin == s.link.plugin)
                .map(|i| (i, Arc::clone(&demands[i])));
            Arc::new(Sub {
                link: Arc::clone(&s.link),
                id: s.id,
                pattern: s.pattern.clone(),
                kind: s.kind,
                group: s.group.clone(),
                demand,
                queue: Arc::clone(&s.queue),
            })
        })
        .collect();
}
