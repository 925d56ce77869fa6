//! The data directory: lock file (one host per directory), API token, API socket, plugin logs.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Environment variable that sets the data directory.
pub const ENV_DATA_DIR: &str = "APPFW_DATA_DIR";

/// Why the data directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    /// Another host holds the lock.
    #[error(
        "data directory {dir} is in use by another appfw host{}; stop it or pass another --data-dir",
        .pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
    )]
    Locked {
        /// The directory.
        dir: PathBuf,
        /// The pid written in the lock file, if readable.
        pid: Option<u32>,
    },
    /// A file operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was attempted.
        what: &'static str,
        /// On which path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// No directory was configured and no home directory is known.
    #[error("no data directory: set --data-dir, {ENV_DATA_DIR}, data_dir in the config, or HOME")]
    NoDefault,
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> DataDirError + 'a {
    move |source| DataDirError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// The default data directory: `$XDG_STATE_HOME/appfw` or `~/.local/state/appfw`.
pub fn default_data_dir() -> Result<PathBuf, DataDirError> {
    if let Some(x) = std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(x).join("appfw"));
    }
    std::env::var_os("HOME")
        .filter(|v| !v.is_empty())
        .map(|h| PathBuf::from(h).join(".local/state/appfw"))
        .ok_or(DataDirError::NoDefault)
}

/// Resolves the data directory from (in order) an explicit value, `APPFW_DATA_DIR`, the config
/// file, the default.
pub fn resolve(
    explicit: Option<&Path>,
    from_config: Option<&Path>,
) -> Result<PathBuf, DataDirError> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    if let Some(v) = std::env::var_os(ENV_DATA_DIR).filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(v));
    }
    if let Some(p) = from_config {
        return Ok(p.to_path_buf());
    }
    default_data_dir()
}

/// Paths inside a data directory; usable by clients without taking the lock.
#[derive(Clone, Debug)]
pub struct Layout {
    /// The directory itself.
    pub root: PathBuf,
}

impl Layout {
    /// The layout of `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }
    /// The lock file.
    pub fn lock_file(&self) -> PathBuf {
        self.root.join("appfw.lock")
    }
    /// The API bearer token (mode 0600).
    pub fn token_file(&self) -> PathBuf {
        self.root.join("token")
    }
    /// The API Unix socket (mode 0600).
    pub fn api_socket(&self) -> PathBuf {
        self.root.join("api.sock")
    }
    /// The embedded store.
    pub fn store_file(&self) -> PathBuf {
        self.root.join("appfw.db")
    }
    /// The host's own log, JSON lines.
    pub fn host_log(&self) -> PathBuf {
        self.root.join("host.jsonl")
    }
    /// Per-plugin log files (`<plugin>.log`, rotated into `<plugin>/`).
    pub fn logs_dir(&self) -> PathBuf {
        self.root.join("logs")
    }
    /// Reads the token (for clients).
    pub fn read_token(&self) -> Result<String, DataDirError> {
        let path = self.token_file();
        fs::read_to_string(&path)
            .map(|t| t.trim().to_string())
            .map_err(io("cannot read API token", &path))
    }
}

/// An open, locked data directory. The lock is released when this is dropped.
#[derive(Debug)]
pub struct DataDir {
    layout: Layout,
    token: String,
    // Held for the flock; closing it releases the lock.
    _lock: File,
}

impl DataDir {
    /// Creates (mode 0700) and locks `root`, and creates the token on first start.
    pub fn open(root: &Path) -> Result<Self, DataDirError> {
        fs::create_dir_all(root).map_err(io("cannot create data directory", root))?;
        let layout = Layout::new(root);
        let lock_path = layout.lock_file();
        let mut lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock_path)
            .map_err(io("cannot open lock file", &lock_path))?;
        if let Err(e) =
            rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive)
        {
            if e == rustix::io::Errno::WOULDBLOCK {
                let mut s = String::new();
                let _ = lock.read_to_string(&mut s);
                return Err(DataDirError::Locked {
                    dir: root.to_path_buf(),
                    pid: s.trim().parse().ok(),
                });
            }
            return Err(DataDirError::Io {
                what: "cannot lock",
                path: lock_path,
                source: e.into(),
            });
        }
        lock.set_len(0)
            .map_err(io("cannot write lock file", &lock_path))?;
        writeln!(lock, "{}", std::process::id())
            .map_err(io("cannot write lock file", &lock_path))?;
        fs::set_permissions(root, fs::Permissions::from_mode(0o700))
            .map_err(io("cannot set permissions of", root))?;
        let logs = layout.logs_dir();
        fs::create_dir_all(&logs).map_err(io("cannot create", &logs))?;
        let token = load_or_create_token(&layout.token_file())?;
        Ok(Self {
            layout,
            token,
            _lock: lock,
        })
    }

    /// The paths.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The API bearer token.
    pub fn token(&self) -> &str {
        &self.token
    }
}

fn load_or_create_token(path: &Path) -> Result<String, DataDirError> {
    match fs::read_to_string(path) {
        Ok(t) if t.trim().len() >= 32 => {
            // Tighten permissions if someone loosened them: the token grants full control.
            fs::set_permissions(path, fs::Permissions::from_mode(0o600))
                .map_err(io("cannot set permissions of", path))?;
            return Ok(t.trim().to_string());
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("cannot read", path)(e)),
    }
    let mut raw = [0u8; 32];
    let mut filled = 0;
    while filled < raw.len() {
        let n = rustix::rand::getrandom(&mut raw[filled..], rustix::rand::GetRandomFlags::empty())
            .map_err(|e| io("cannot get random bytes for", path)(e.into()))?;
        filled += n;
    }
    let token: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    let tmp = path.with_extension("tmp");
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io("cannot create", &tmp))?;
    writeln!(f, "{token}").map_err(io("cannot write", &tmp))?;
    f.sync_all().map_err(io("cannot write", &tmp))?;
    fs::rename(&tmp, path).map_err(io("cannot create", path))?;
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_open_is_refused_with_the_holder_pid() {
        let dir = tempfile::tempdir().unwrap();
        let first = DataDir::open(dir.path()).unwrap();
        let err = DataDir::open(dir.path()).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("in use by another appfw host"), "{msg}");
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
        drop(first);
        DataDir::open(dir.path()).unwrap();
    }

    #[test]
    fn token_is_created_once_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let t1 = DataDir::open(dir.path()).unwrap().token().to_string();
        let t2 = DataDir::open(dir.path()).unwrap().token().to_string();
        assert_eq!(t1, t2);
        assert_eq!(t1.len(), 64);
        let mode = fs::metadata(dir.path().join("token"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
