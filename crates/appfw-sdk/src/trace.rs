//! W3C trace context for bus messages.
//!
//! Every message and request the SDK sends carries a `traceparent`. Inside a handler, the
//! handler's context is current: it continues the sender's trace (same trace id, a new span id
//! whose parent is the sender's span), and whatever the handler publishes or requests carries
//! that trace id with a new span id of its own. Outside any handler, a send starts a new trace.
//! The spans themselves are exported by the tracing integration, not here.

use std::cell::Cell;
use std::future::Future;

use appfw_proto::trace::{TraceParent, valid_tracestate};

tokio::task_local! {
    static CURRENT: TraceContext;
}

/// The trace context of a piece of work: its trace, its own span and the span it continues.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TraceContext {
    /// The trace id, shared by every span of the trace.
    pub trace_id: [u8; 16],
    /// This work's span id (the `parent-id` of what it sends).
    pub span_id: [u8; 8],
    /// The span this work continues (the sender's), if any.
    pub parent_span_id: Option<[u8; 8]>,
    /// Trace flags; bit 0 = sampled.
    pub flags: u8,
    /// The W3C `tracestate` carried along unchanged (may be empty).
    pub tracestate: String,
}

thread_local! {
    static RNG: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    let mut b = [0u8; 8];
    let _ = rustix::rand::getrandom(&mut b, rustix::rand::GetRandomFlags::empty());
    // Mixed with the clock in case getrandom failed.
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    u64::from_le_bytes(b) ^ t
}

/// splitmix64: ids need to be unique, not secret, and a syscall per message would cost more
/// than the rest of the send.
pub(crate) fn next_u64() -> u64 {
    RNG.with(|s| {
        let x = s.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        s.set(x);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    })
}

fn span_id() -> [u8; 8] {
    loop {
        let v = next_u64();
        if v != 0 {
            return v.to_be_bytes();
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl TraceContext {
    /// A new trace (sampled), as a send outside any handler starts.
    pub fn new_root() -> Self {
        let hi = span_id();
        let lo = next_u64().to_be_bytes();
        let mut trace_id = [0u8; 16];
        trace_id[..8].copy_from_slice(&hi);
        trace_id[8..].copy_from_slice(&lo);
        Self {
            trace_id,
            span_id: span_id(),
            parent_span_id: None,
            flags: 1,
            tracestate: String::new(),
        }
    }

    /// The context of work done for a message carrying these header values: the same trace,
    /// a new span whose parent is the sender's. `None` if `traceparent` is absent or malformed.
    pub fn continue_from(traceparent: &str, tracestate: &str) -> Option<Self> {
        let tp = TraceParent::parse(traceparent)?;
        Some(Self {
            trace_id: tp.trace_id,
            span_id: span_id(),
            parent_span_id: Some(tp.parent_id),
            flags: tp.flags,
            tracestate: if valid_tracestate(tracestate) {
                tracestate.to_string()
            } else {
                String::new()
            },
        })
    }

    /// A child span: the same trace, a new span id, this span as parent.
    pub fn child(&self) -> Self {
        Self {
            trace_id: self.trace_id,
            span_id: span_id(),
            parent_span_id: Some(self.span_id),
            flags: self.flags,
            tracestate: self.tracestate.clone(),
        }
    }

    /// The `traceparent` header value naming this span as the parent.
    pub fn traceparent(&self) -> String {
        TraceParent {
            trace_id: self.trace_id,
            parent_id: self.span_id,
            flags: self.flags,
        }
        .format()
    }

    /// The trace id in hex (32 characters), as log lines and tracing backends show it.
    pub fn trace_id_hex(&self) -> String {
        hex(&self.trace_id)
    }

    /// This span's id in hex (16 characters).
    pub fn span_id_hex(&self) -> String {
        hex(&self.span_id)
    }

    /// Whether the sampled flag is set.
    pub fn is_sampled(&self) -> bool {
        self.flags & 1 == 1
    }

    /// The context of the handler running on this task, if any.
    pub fn current() -> Option<Self> {
        CURRENT.try_with(Clone::clone).ok()
    }

    /// Runs `f` with this context current, so what it sends continues this trace. Handlers
    /// get this for free; use it to carry the context into a task a handler spawns.
    pub async fn scope<F: Future>(self, f: F) -> F::Output {
        CURRENT.scope(self, f).await
    }

    /// The context of a message about to be sent: a child of the current one, or a new trace
    /// when `root` is allowed, else none.
    pub(crate) fn for_outgoing(root: bool) -> Option<Self> {
        match Self::current() {
            Some(c) => Some(c.child()),
            None if root => Some(Self::new_root()),
            None => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continuing_keeps_the_trace_and_makes_a_new_span_under_the_sender() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let c = TraceContext::continue_from(tp, "congo=t61").unwrap();
        assert_eq!(c.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(
            c.parent_span_id.map(|p| hex(&p)),
            Some("00f067aa0ba902b7".into())
        );
        assert_ne!(c.span_id_hex(), "00f067aa0ba902b7");
        assert_eq!(c.tracestate, "congo=t61");
        let out = c.child();
        assert_eq!(out.trace_id, c.trace_id);
        assert_ne!(out.span_id, c.span_id);
        assert!(TraceContext::continue_from("garbage", "").is_none());
        assert!(
            TraceContext::continue_from(tp, "bad state")
                .unwrap()
                .tracestate
                .is_empty()
        );
    }

    #[test]
    fn roots_are_valid_and_distinct() {
        let a = TraceContext::new_root();
        let b = TraceContext::new_root();
        assert_ne!(a.trace_id, b.trace_id);
        assert!(TraceParent::parse(&a.traceparent()).is_some());
        assert!(a.is_sampled());
    }

    #[tokio::test]
    async fn the_scope_makes_a_context_current() {
        assert!(TraceContext::current().is_none());
        assert!(TraceContext::for_outgoing(false).is_none());
        let c = TraceContext::new_root();
        let inner = c
            .clone()
            .scope(async { TraceContext::for_outgoing(false) })
            .await
            .unwrap();
        assert_eq!(inner.trace_id, c.trace_id);
        assert_eq!(inner.parent_span_id, Some(c.span_id));
    }
}
