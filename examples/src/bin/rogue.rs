//! `rogue`: breaks the wire protocol on purpose, for the host's fault-handling tests.
//! `--mode malformed` sends a frame whose header is garbage; `--mode oversized` announces a frame
//! larger than any maximum; `--mode bad-version` offers protocol versions 2-3 only and prints
//! the host's refusal; `--mode unknown` sends a frame of a type no version knows, then asks `echo`
//! something and prints the answer (the host must skip the unknown frame and keep going). All but
//! `bad-version` first complete a normal handshake.

use std::io::Write;
use std::time::Duration;

use appfw_examples::flag;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mode = flag("--mode").unwrap_or_else(|| "malformed".into());
    if mode == "bad-version" {
        match appfw_sdk::Plugin::builder()
            .protocol_versions(2, 3)
            .connect()
            .await
        {
            Ok(_) => {
                println!("rogue: the host accepted versions 2-3");
                std::process::exit(0);
            }
            Err(e) => {
                println!("rogue: {e}");
                std::process::exit(3);
            }
        }
    }
    // Keep a raw duplicate of the socket before the SDK takes it, to write garbage later.
    let fd: i32 = std::env::var(appfw_proto::ENV_PLUGIN_FD)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            eprintln!("rogue: not started as a plugin");
            std::process::exit(2)
        });
    // SAFETY: the descriptor is the inherited, open socket; it is only borrowed for the dup.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let Ok(dup) = rustix::io::dup(borrowed) else {
        eprintln!("rogue: cannot duplicate the plugin socket");
        std::process::exit(2)
    };
    let mut raw = std::os::unix::net::UnixStream::from(dup);
    let plugin = match appfw_sdk::Plugin::connect().await {
        Ok(p) => p,
        Err(e) => {
            eprintln!("rogue: {e}");
            std::process::exit(1);
        }
    };
    println!("rogue: connected, now sending a {mode} frame");
    if mode == "unknown" {
        // frame_len 5, header_len 3, header {type: 999 (tag 08, varint e7 07)}, no payload.
        let _ = raw.write_all(&[0, 0, 0, 5, 0, 3, 0x08, 0xe7, 0x07]);
        // echo may still be starting: retry temporary errors for a while.
        for attempt in 0.. {
            match plugin
                .request("echo", "still here", Duration::from_secs(5))
                .await
            {
                Ok(r) => {
                    println!("rogue: echo answered {:?}", String::from_utf8_lossy(&r));
                    break;
                }
                Err(e) if e.is_temporary() && attempt < 500 => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => {
                    println!("rogue: echo failed: {e}");
                    break;
                }
            }
        }
        let _ = plugin.run_until_shutdown().await;
        return;
    }
    let bytes: Vec<u8> = match mode.as_str() {
        // frame_len 4, header_len 2, header bytes 0xff 0xff (not protobuf).
        "malformed" => vec![0, 0, 0, 4, 0, 2, 0xff, 0xff],
        // frame_len 1 GiB: larger than any maximum frame size.
        _ => vec![0x40, 0, 0, 0, 0, 0],
    };
    let _ = raw.write_all(&bytes);
    // Wait to be stopped by the host.
    tokio::select! {
        () = plugin.shutdown_requested() => {}
        () = tokio::time::sleep(Duration::from_secs(3600)) => {}
    }
}
