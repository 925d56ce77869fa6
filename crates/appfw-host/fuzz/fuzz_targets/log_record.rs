//! Feeds arbitrary bytes to the log record reader and to the capture's line splitter: nothing
//! may panic, a parsed record must write back to the same line, a file read as records never
//! reads past its end, and the pieces of a stream (cut at an arbitrary chunk boundary and line
//! length) must join back to it, runs holding whole lines of at most the maximum length.
#![no_main]

use appfw_host::logs::capture::{Piece, split};
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
    }
    let mut it = record::Records::new(rest);
    it.by_ref().for_each(|r| assert!(!r.payload.contains(&b'\n')));
    assert!(it.consumed() <= rest.len());
    let max = usize::from(ctl % 64) + 1;
    let cut = (usize::from(ctl) * 7) % (rest.len() + 1);
    let mut carry = Vec::new();
    let mut joined = Vec::new();
    for chunk in [&rest[..cut], &rest[cut..]] {
        split(&mut carry, chunk, max, |p| match p {
            Piece::Line(l, end) => {
                assert!(l.len() <= max && !l.contains(&b'\n'));
                joined.extend_from_slice(l);
                if end == End::Newline {
                    joined.push(b'\n');
                }
            }
            Piece::Run(r, n) => {
                let lines = &chunk[r];
                assert_eq!(record::count_lines(lines), n);
                assert_eq!(lines.last(), Some(&b'\n'));
                assert!(lines.split(|b| *b == b'\n').all(|l| l.len() <= max));
                joined.extend_from_slice(lines);
            }
        });
    }
    joined.extend_from_slice(&carry);
    assert_eq!(joined, rest);
});
