//! W3C trace context (<https://www.w3.org/TR/trace-context/>) as carried in
//! `Header.traceparent` / `Header.tracestate`: parsing, checking and formatting, without
//! allocating except for the formatted string.

/// Length of a version-00 `traceparent`: `00-` + 32 + `-` + 16 + `-` + 2.
pub const TRACEPARENT_LEN: usize = 55;
/// Longest `tracestate` the spec allows a vendor to propagate.
pub const TRACESTATE_MAX_LEN: usize = 512;
/// Most list members in a `tracestate`.
pub const TRACESTATE_MAX_MEMBERS: usize = 32;

/// The fields of a `traceparent`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TraceParent {
    /// The trace id (never all zero).
    pub trace_id: [u8; 16],
    /// The id of the sender's span (never all zero).
    pub parent_id: [u8; 8],
    /// Trace flags; bit 0 = sampled.
    pub flags: u8,
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

/// Lowercase hex only, as the spec requires.
fn decode_hex<const N: usize>(s: &[u8]) -> Option<[u8; N]> {
    if s.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        out[i] = (hex_val(pair[0])? << 4) | hex_val(pair[1])?;
    }
    Some(out)
}

impl TraceParent {
    /// Parses a `traceparent` value. Version `00` must be exactly 55 characters; a later
    /// version may append `-`-separated fields, which are ignored (as the spec says); version
    /// `ff`, upper-case hex and all-zero ids are invalid.
    pub fn parse(s: &str) -> Option<Self> {
        let b = s.as_bytes();
        if b.len() < TRACEPARENT_LEN {
            return None;
        }
        let version: [u8; 1] = decode_hex(&b[0..2])?;
        if version[0] == 0xff
            || b[2] != b'-'
            || b[35] != b'-'
            || b[52] != b'-'
            || (version[0] == 0 && b.len() != TRACEPARENT_LEN)
            || (b.len() > TRACEPARENT_LEN && b[TRACEPARENT_LEN] != b'-')
        {
            return None;
        }
        let trace_id: [u8; 16] = decode_hex(&b[3..35])?;
        let parent_id: [u8; 8] = decode_hex(&b[36..52])?;
        let flags: [u8; 1] = decode_hex(&b[53..55])?;
        if trace_id == [0; 16] || parent_id == [0; 8] {
            return None;
        }
        Some(Self {
            trace_id,
            parent_id,
            flags: flags[0],
        })
    }

    /// The version-00 text form.
    pub fn format(&self) -> String {
        let mut s = String::with_capacity(TRACEPARENT_LEN);
        s.push_str("00-");
        push_hex(&mut s, &self.trace_id);
        s.push('-');
        push_hex(&mut s, &self.parent_id);
        s.push('-');
        push_hex(&mut s, &[self.flags]);
        s
    }
}

fn push_hex(s: &mut String, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        s.push(char::from(HEX[usize::from(b >> 4)]));
        s.push(char::from(HEX[usize::from(b & 0xf)]));
    }
}

/// Whether `s` is an acceptable `tracestate`: at most 512 printable ASCII characters and 32
/// comma-separated members, each empty (allowed by the spec) or `key=value` with a non-empty key.
pub fn valid_tracestate(s: &str) -> bool {
    if s.len() > TRACESTATE_MAX_LEN || !s.bytes().all(|c| (0x20..=0x7e).contains(&c)) {
        return false;
    }
    let mut members = 0;
    for m in s.split(',') {
        let m = m.trim_matches([' ', '\t']);
        if m.is_empty() {
            continue;
        }
        members += 1;
        match m.split_once('=') {
            Some((k, v)) if !k.is_empty() && !v.is_empty() && !k.contains(' ') => {}
            _ => return false,
        }
    }
    members <= TRACESTATE_MAX_MEMBERS
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn the_spec_example_parses_and_formats_back() {
        let t = TraceParent::parse(GOOD).unwrap();
        assert_eq!(t.flags, 1);
        assert_eq!(
            t.parent_id,
            [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]
        );
        assert_eq!(t.format(), GOOD);
    }

    #[test]
    fn malformed_values_are_refused() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad:?}");
        }
        // A later version may carry more fields.
        assert!(
            TraceParent::parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-xyz")
                .is_some()
        );
    }

    #[test]
    fn tracestate_checks() {
        assert!(valid_tracestate(""));
        assert!(valid_tracestate("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"));
        assert!(!valid_tracestate("novalue"));
        assert!(!valid_tracestate("a=\u{7f}"));
        assert!(!valid_tracestate(&"a=b,".repeat(33)));
        assert!(!valid_tracestate(&format!("a={}", "x".repeat(600))));
    }

    proptest! {
        #[test]
        fn format_parse_round_trip(trace in any::<[u8; 16]>(), parent in any::<[u8; 8]>(), flags in any::<u8>()) {
            prop_assume!(trace != [0; 16] && parent != [0; 8]);
            let t = TraceParent { trace_id: trace, parent_id: parent, flags };
            let s = t.format();
            prop_assert_eq!(s.len(), TRACEPARENT_LEN);
            prop_assert_eq!(TraceParent::parse(&s), Some(t));
        }

        #[test]
        fn arbitrary_text_never_panics(s in ".{0,80}") {
            let _ = TraceParent::parse(&s);
            let _ = valid_tracestate(&s);
        }
    }
}
