//! Reading a plugin's records back from its files, rotated (plain or gzipped) and current.

use std::io::{self, Read};
use std::path::Path;

use super::files::{archive_dir, current_path, rotated};
use super::record::{self, End, Kind};

/// A record with its own payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnedRecord {
    /// Sequence number.
    pub seq: u64,
    /// Microseconds since the Unix epoch.
    pub time_us: u64,
    /// Source.
    pub kind: Kind,
    /// How the line ended.
    pub end: End,
    /// The line's bytes.
    pub payload: Vec<u8>,
}

/// A whole file's bytes, gunzipped if its name ends in `.gz`.
pub fn file_bytes(path: &Path) -> io::Result<Vec<u8>> {
    let f = std::fs::File::open(path)?;
    let mut out = Vec::new();
    if path.extension().is_some_and(|e| e == "gz") {
        flate2::read::GzDecoder::new(f).read_to_end(&mut out)?;
    } else {
        io::BufReader::new(f).read_to_end(&mut out)?;
    }
    Ok(out)
}

/// Every complete record of `plugin` numbered `from` or more, oldest first, and how many lines
/// were not records (damage). An incomplete record at the end of a file (a write in progress)
/// is left out. A file rotated or deleted while this reads
/// is looked for again once.
pub fn records(logs: &Path, plugin: &str, from: u64) -> io::Result<(Vec<OwnedRecord>, u64)> {
    let mut out = Vec::new();
    let mut bad = 0;
    let mut push = |bytes: &[u8], out: &mut Vec<OwnedRecord>| {
        let mut it = record::Records::new(bytes);
        for r in it.by_ref().filter(|r| r.seq >= from) {
            out.push(OwnedRecord {
                seq: r.seq,
                time_us: r.time_us,
                kind: r.kind,
                end: r.end,
                payload: r.payload.to_vec(),
            });
        }
        bad += it.bad();
    };
    let mut files = rotated(&archive_dir(logs, plugin));
    files.retain(|f| f.last >= from);
    for f in &files {
        let bytes = match file_bytes(&f.path) {
            Ok(b) => b,
            // Compressed meanwhile: read the .gz.
            Err(e) if e.kind() == io::ErrorKind::NotFound && !f.gz => {
                file_bytes(&f.path.with_extension("log.gz"))?
            }
            Err(e) => return Err(e),
        };
        push(&bytes, &mut out);
    }
    match file_bytes(&current_path(logs, plugin)) {
        Ok(b) => push(&b, &mut out),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    Ok((out, bad))
}
