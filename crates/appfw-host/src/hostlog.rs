//! The host's own log: what the binary's tracing setup lets the host change at run time.
//!
//! The binary sets up `tracing` before the config is read (so loading can log); once the host
//! knows its data directory and `logs.host_level`, it opens the JSON-lines file there and sets
//! the level through this interface, and `PUT /api/v1/log-level` changes the level live.

use std::path::Path;

/// Run-time control of the host's log.
pub trait LogControl: Send + Sync + std::fmt::Debug {
    /// Sets the filter (`info`, `appfw_host::bus=debug,info`); an error says what is wrong.
    fn set_level(&self, filter: &str) -> Result<(), String>;
    /// The filter in force.
    fn level(&self) -> String;
    /// Whether the level was fixed on the command line (it then wins over the config).
    fn fixed_by_flag(&self) -> bool;
    /// Starts writing JSON lines to `path` (appending).
    fn open_file(&self, path: &Path) -> std::io::Result<()>;
}
