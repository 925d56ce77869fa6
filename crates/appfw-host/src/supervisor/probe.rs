//! Health probes of a plugin's service: exec (exit code 0), HTTP GET (2xx/3xx), TCP connect.
//! One task per probe while the plugin's process runs; each result goes to the plugin's owner
//! task, which applies the thresholds.

use std::path::PathBuf;
use std::time::Duration;

use appfw_config::ProbeConfig;
use bytes::Bytes;
use http_body_util::Empty;
use rustix::process::Signal;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::process::{ProcessSpec, Spawner, describe};

/// One probe's outcome.
#[derive(Debug)]
pub(crate) struct ProbeResult {
    /// Index in the plugin's `probes`.
    pub index: usize,
    /// Passed?
    pub ok: bool,
    /// What was seen (status, error).
    pub message: String,
}

/// Starts one task per probe; they stop when `cancel` is cancelled.
pub(crate) fn start(
    plugin: &str,
    probes: &[ProbeConfig],
    spawner: &Spawner,
    base_dir: &std::path::Path,
    tx: &mpsc::Sender<ProbeResult>,
    cancel: &CancellationToken,
) -> Vec<JoinHandle<()>> {
    probes
        .iter()
        .enumerate()
        .map(|(index, p)| {
            let (p, tx, cancel) = (p.clone(), tx.clone(), cancel.clone());
            let spawner = spawner.clone();
            let base = base_dir.to_path_buf();
            let name = format!("{plugin}/probe:{}", p.display_name());
            tokio::spawn(async move {
                tokio::select! {
                    () = tokio::time::sleep(p.start_grace) => {}
                    () = cancel.cancelled() => return,
                }
                loop {
                    let outcome = tokio::select! {
                        r = check(&name, &p, &spawner, &base) => r,
                        () = cancel.cancelled() => return,
                    };
                    let (ok, message) = match outcome {
                        Ok(m) => (true, m),
                        Err(m) => (false, m),
                    };
                    if tx.send(ProbeResult { index, ok, message }).await.is_err() {
                        return;
                    }
                    tokio::select! {
                        () = tokio::time::sleep(p.interval) => {}
                        () = cancel.cancelled() => return,
                    }
                }
            })
        })
        .collect()
}

async fn check(
    name: &str,
    p: &ProbeConfig,
    spawner: &Spawner,
    base: &std::path::Path,
) -> Result<String, String> {
    if let Some(argv) = &p.exec {
        return exec(name, argv, p.timeout, spawner, base).await;
    }
    if let Some(url) = &p.http {
        return match tokio::time::timeout(p.timeout, http_get(url)).await {
            Ok(r) => r,
            Err(_) => Err(format!(
                "no answer within {}",
                humantime::format_duration(p.timeout)
            )),
        };
    }
    let target = p.tcp.clone().unwrap_or_default();
    match tokio::time::timeout(p.timeout, tokio::net::TcpStream::connect(&target)).await {
        Ok(Ok(_)) => Ok(format!("connected to {target}")),
        Ok(Err(e)) => Err(format!("cannot connect to {target}: {e}")),
        Err(_) => Err(format!(
            "no connection to {target} within {}",
            humantime::format_duration(p.timeout)
        )),
    }
}

/// Runs the command through the host's spawner (the one reaper sees every exit); a command
/// still running at the timeout is killed with its process group.
async fn exec(
    name: &str,
    argv: &[String],
    timeout: Duration,
    spawner: &Spawner,
    base: &std::path::Path,
) -> Result<String, String> {
    let Some((cmd, args)) = argv.split_first() else {
        return Err("empty command".into());
    };
    let program = if cmd.contains('/') {
        base.join(cmd)
    } else {
        PathBuf::from(cmd)
    };
    let spec = ProcessSpec {
        cgroups: Vec::new(),
        limits: crate::resources::ProcessLimits::default(),
        name: name.to_string(),
        program,
        args: args.to_vec(),
        env: Vec::new(),
        working_dir: None,
        connect: false,
        quiet: true,
        env_clear: false,
        ids: None,
        umask: None,
    };
    let mut child = spawner.spawn(spec).await.map_err(|e| e.to_string())?;
    match tokio::time::timeout(timeout, &mut child.exit).await {
        Ok(Ok(st)) if st.success() => Ok("exit code 0".into()),
        Ok(Ok(st)) => Err(describe(&st)),
        Ok(Err(_)) => Err("the host is stopping".into()),
        Err(_) => {
            let _ = child.signal_group(Signal::KILL);
            let _ = tokio::time::timeout(Duration::from_secs(1), &mut child.exit).await;
            Err(format!(
                "still running after {}; killed",
                humantime::format_duration(timeout)
            ))
        }
    }
}

/// A plain HTTP/1.1 GET (probes target local services; TLS is not probed).
async fn http_get(url: &str) -> Result<String, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url:?} is not http://"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr = if authority.contains(':') {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    let stream = tokio::net::TcpStream::connect(&addr)
        .await
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP handshake with {addr} failed: {e}"))?;
    let driver = tokio::spawn(conn);
    let req = hyper::Request::get(path)
        .header(hyper::header::HOST, authority)
        .header(
            hyper::header::USER_AGENT,
            concat!("appfw-probe/", env!("CARGO_PKG_VERSION")),
        )
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let result = sender.send_request(req).await;
    drop(sender);
    driver.abort();
    let _ = driver.await;
    let resp = result.map_err(|e| format!("GET {url} failed: {e}"))?;
    let status = resp.status();
    if status.is_success() || status.is_redirection() {
        Ok(format!("HTTP {}", status.as_u16()))
    } else {
        Err(format!("HTTP {}", status.as_u16()))
    }
}
