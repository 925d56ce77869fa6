//! Feeds arbitrary bytes to the log record parser and to the capture's line splitter: nothing
//! may panic, a parsed record must write back to the same line, and the split pieces of a
//! stream (cut at an arbitrary chunk boundary and line length) must join back to it.
#![no_main]

use appfw_host::logs::capture::split;
use appfw_host::logs::record::{self, End, Stamp};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, rest)) = data.split_first() else {
        return;
    };
    for line in rest.split(|b| *b == b'\n') {
        if let Ok(r) = record::parse(line) {
            let mut out = Vec::new();
            let stamp = Stamp::at(record::system_time(r.time_us));
            record::write(&mut out, r.seq, &stamp, r.kind, r.end, r.payload);
            assert_eq!(record::parse(&out), Ok(r));
        }
        let _ = record::last_seq(line);
    }
    let max = usize::from(ctl % 64) + 1;
    let cut = (usize::from(ctl) * 7) % (rest.len() + 1);
    let mut carry = Vec::new();
    let mut joined = Vec::new();
    for chunk in [&rest[..cut], &rest[cut..]] {
        split(&mut carry, chunk, max, |p, end| {
            assert!(p.len() <= max && !p.contains(&b'\n'));
            joined.extend_from_slice(p);
            if end == End::Newline {
                joined.push(b'\n');
            }
        });
    }
    joined.extend_from_slice(&carry);
    assert_eq!(joined, rest);
});
