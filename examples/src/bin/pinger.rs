//! `pinger`: a plain executable for the respawn benchmark. At start it writes one line to stdout
//! and sends its pid as a datagram to the Unix socket named by `PINGER_SOCK` (if set), then
//! sleeps until killed.

use std::io::Write;
use std::os::unix::net::UnixDatagram;

fn main() {
    let pid = std::process::id();
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "pinger {pid} up");
    let _ = out.flush();
    if let Some(path) = std::env::var_os("PINGER_SOCK")
        && let Ok(s) = UnixDatagram::unbound()
    {
        let _ = s.send_to(pid.to_string().as_bytes(), path);
    }
    loop {
        std::thread::park();
    }
}
