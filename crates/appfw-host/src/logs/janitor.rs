//! Background work on rotated files: gzip them, and delete the oldest beyond `keep_files` or
//! `keep_days` — never one the index has not read to its end.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::files::{Rotated, rotated};

/// Whether the index has read `plugin`'s records up to `seq`.
pub type Indexed = Arc<dyn Fn(&str, u64) -> bool + Send + Sync>;

/// What the janitor keeps.
#[derive(Clone)]
pub struct Keep {
    /// Rotated files per plugin (0: any number).
    pub files: u32,
    /// Age of a rotated file (zero: any age).
    pub age: Duration,
    /// Whether to gzip rotated files.
    pub compress: bool,
    /// Asked before a file is deleted.
    pub indexed: Indexed,
}

impl Keep {
    /// From the `[logs]` settings of a plugin.
    pub fn from_config(cfg: &crate::config::LogsConfig, indexed: Indexed) -> Self {
        Self {
            files: cfg.keep_files,
            age: Duration::from_secs(u64::from(cfg.keep_days) * 86_400),
            compress: cfg.compress,
            indexed,
        }
    }
}

/// Gzips `path` (`x.log`) into `x.log.gz` next to it, then deletes it. The temporary file is
/// removed if anything fails, so a full disk leaves the plain file as it was.
pub fn compress(path: &Path) -> io::Result<PathBuf> {
    let gz = path.with_extension("log.gz");
    let tmp = path.with_extension("log.gz.tmp");
    let res = (|| {
        let mut src = std::fs::File::open(path)?;
        let out = std::fs::File::create(&tmp)?;
        let mut enc = flate2::write::GzEncoder::new(
            io::BufWriter::with_capacity(256 * 1024, out),
            flate2::Compression::fast(),
        );
        io::copy(&mut src, &mut enc)?;
        let mut w = enc.finish()?;
        w.flush()?;
        // Retention by age goes by the time of the file's last write, not its compression.
        if let Ok(m) = src.metadata().and_then(|m| m.modified()) {
            w.get_ref().set_modified(m)?;
        }
        w.get_ref().sync_data()?;
        std::fs::rename(&tmp, &gz)
    })();
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::remove_file(path)?;
    Ok(gz)
}

/// One pass over one plugin's archive directory, at time `now`. Returns the files deleted.
pub fn sweep(plugin: &str, dir: &Path, keep: &Keep, now: SystemTime) -> Vec<PathBuf> {
    // Leftovers of a compression interrupted by a crash.
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.filter_map(Result::ok) {
            if e.file_name()
                .to_str()
                .is_some_and(|n| n.ends_with(".gz.tmp"))
            {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    let files = rotated(dir);
    if keep.compress {
        for f in files.iter().filter(|f| !f.gz) {
            if let Err(e) = compress(&f.path) {
                tracing::warn!(plugin, "cannot compress {}: {e}", f.path.display());
                break;
            }
        }
    }
    let files = rotated(dir);
    let excess = if keep.files == 0 {
        0
    } else {
        files.len().saturating_sub(keep.files as usize)
    };
    let mut deleted = Vec::new();
    for (i, f) in files.iter().enumerate() {
        let old = !keep.age.is_zero() && age(f, now) > keep.age;
        if i >= excess && !old {
            // Sorted oldest first: a younger file within the count is kept, and so is the rest.
            break;
        }
        if !(keep.indexed)(plugin, f.last) {
            // The index has not read it yet: keep it, and everything newer.
            break;
        }
        match std::fs::remove_file(&f.path) {
            Ok(()) => deleted.push(f.path.clone()),
            Err(e) => tracing::warn!(plugin, "cannot delete {}: {e}", f.path.display()),
        }
    }
    deleted
}

fn age(f: &Rotated, now: SystemTime) -> Duration {
    std::fs::metadata(&f.path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|m| now.duration_since(m).ok())
        .unwrap_or_default()
}

/// Every plugin archive directory under `logs`, by plugin name.
pub fn plugin_dirs(logs: &Path) -> Vec<(String, PathBuf)> {
    let Ok(rd) = std::fs::read_dir(logs) else {
        return Vec::new();
    };
    rd.filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| Some((e.file_name().to_str()?.to_string(), e.path())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logs::files::{FileOptions, LogFile};
    use crate::logs::record::{self, End, Kind, Stamp};

    #[test]
    fn compresses_then_keeps_n_and_spares_what_the_index_has_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let opts = FileOptions {
            max_file_size: 200,
            max_age: Duration::from_secs(3600),
            max_line: 100,
        };
        let (mut f, _) = LogFile::open(dir.path(), "p", opts).unwrap();
        for s in 1..=40u64 {
            let mut b = Vec::new();
            record::write(
                &mut b,
                s,
                &Stamp::now(),
                Kind::Stdout,
                End::Newline,
                b"0123456789012345678901234567890123456789",
            );
            f.write(&[&b], s, s, 1);
        }
        let arch = dir.path().join("p");
        let n = rotated(&arch).len();
        assert!(n >= 10, "{n}");
        let watermark = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let w = Arc::clone(&watermark);
        let keep = Keep {
            files: 3,
            age: Duration::ZERO,
            compress: true,
            indexed: Arc::new(move |_, seq| seq <= w.load(std::sync::atomic::Ordering::Relaxed)),
        };
        assert!(
            sweep("p", &arch, &keep, SystemTime::now()).is_empty(),
            "nothing indexed: nothing deleted"
        );
        let files = rotated(&arch);
        assert_eq!(files.len(), n);
        assert!(files.iter().all(|f| f.gz));
        // Indexed up to the middle of the third file: the first two go.
        assert!(files[2].last > files[2].first);
        watermark.store(files[2].last - 1, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(sweep("p", &arch, &keep, SystemTime::now()).len(), 2);
        watermark.store(u64::MAX, std::sync::atomic::Ordering::Relaxed);
        let deleted = sweep("p", &arch, &keep, SystemTime::now());
        assert_eq!(deleted.len(), n - 2 - 3);
        assert_eq!(rotated(&arch), files[n - 3..].to_vec());
        // The kept files decompress to their records.
        let mut text = String::new();
        let gz = std::fs::File::open(&files[n - 1].path).unwrap();
        io::Read::read_to_string(&mut flate2::read::GzDecoder::new(gz), &mut text).unwrap();
        let first = record::parse(text.lines().next().unwrap().as_bytes()).unwrap();
        assert_eq!(first.seq, files[n - 1].first);
    }

    /// Retention by days, with the clock passed in: a file whose last write is older than
    /// `keep_days` goes (once indexed), a younger one stays, whatever the count; compression
    /// keeps the time of the last write.
    #[test]
    fn retention_by_age_deletes_the_old_indexed_files_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let arch = dir.path().join("p");
        std::fs::create_dir_all(&arch).unwrap();
        let now = SystemTime::now();
        let day = Duration::from_secs(86_400);
        // (first, last, age in days)
        let files = [
            (1u64, 10u64, 9u64),
            (11, 20, 5),
            (21, 30, 3),
            (31, 40, 1),
            (41, 50, 0),
        ];
        for (first, last, days) in files {
            let path = arch.join(format!("{first:020}-{last:020}.log"));
            let mut b = Vec::new();
            for s in first..=last {
                record::write(&mut b, s, &Stamp::now(), Kind::Stdout, End::Newline, b"x");
            }
            std::fs::write(&path, &b).unwrap();
            let f = std::fs::File::options().write(true).open(&path).unwrap();
            f.set_modified(now - day * u32::try_from(days).unwrap())
                .unwrap();
        }
        let cfg = crate::config::LogsConfig {
            keep_files: 0,
            keep_days: 2,
            compress: true,
            ..crate::config::LogsConfig::default()
        };
        // The index has read up to seq 15: the 5-day-old file (11-20) is not fully read.
        let keep = Keep::from_config(&cfg, Arc::new(|_, seq| seq <= 15));
        let deleted = sweep("p", &arch, &keep, now);
        assert_eq!(deleted.len(), 1, "{deleted:?}");
        assert!(
            deleted[0]
                .to_string_lossy()
                .contains("00000000000000000001-")
        );
        let left: Vec<(u64, bool)> = rotated(&arch).iter().map(|r| (r.first, r.gz)).collect();
        assert_eq!(left, [(11, true), (21, true), (31, true), (41, true)]);
        // Once read, the 5- and 3-day-old files go; the clock a day later takes the 1-day one.
        let keep = Keep::from_config(&cfg, Arc::new(|_, _| true));
        assert_eq!(sweep("p", &arch, &keep, now).len(), 2);
        assert_eq!(
            rotated(&arch).iter().map(|r| r.first).collect::<Vec<_>>(),
            [31, 41]
        );
        assert_eq!(sweep("p", &arch, &keep, now + day + day / 2).len(), 1);
        assert_eq!(
            rotated(&arch).iter().map(|r| r.first).collect::<Vec<_>>(),
            [41]
        );
        // No limit by age: nothing goes.
        let cfg0 = crate::config::LogsConfig {
            keep_files: 0,
            keep_days: 0,
            ..cfg
        };
        let keep = Keep::from_config(&cfg0, Arc::new(|_, _| true));
        assert!(sweep("p", &arch, &keep, now + day * 365).is_empty());
    }
}
