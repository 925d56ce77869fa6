//! `relay`: the raw relay baseline of the bus benchmark. Listens on `--listen PATH`, accepts
//! `--subs K` downstream connections, then one upstream connection, and copies whole frames from
//! upstream to every downstream connection: no routing, no header rewriting, no bookkeeping. It
//! writes what one read returned (the whole frames in it) before reading again, so it flushes
//! only when its read buffer runs dry. With one downstream connection it also copies the other
//! way (request/reply); with several, what they send is read and dropped.
//!
//! `--per-frame` makes it the textbook relay instead: it reads one frame at a time (length, then
//! body, into a reused buffer) from a 64 KiB buffered reader and writes each frame into a 64 KiB
//! buffered writer per downstream connection, flushing when the reader's buffer is empty. That is
//! the "reads frames from one socket and writes them to the other"; the whole-read copy
//! above does no per-frame work at all and is the stricter bound.

use appfw_examples::{flag, number_flag};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::UnixListener;

/// Copies whole frames from `from` to every writer in `to` until `from` closes.
async fn pump<R, W>(mut from: R, mut to: Vec<W>) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 1 << 20];
    let mut hi = 0;
    loop {
        let n = from.read(&mut buf[hi..]).await?;
        if n == 0 {
            return Ok(());
        }
        hi += n;
        // The whole frames read so far go out; a partial one waits for the next read.
        let mut end = 0;
        while hi - end >= 4 {
            let len = u32::from_be_bytes([buf[end], buf[end + 1], buf[end + 2], buf[end + 3]]);
            let total = 4 + len as usize;
            if hi - end < total {
                if total > buf.len() {
                    buf.resize(total, 0);
                }
                break;
            }
            end += total;
        }
        for w in &mut to {
            w.write_all(&buf[..end]).await?;
        }
        buf.copy_within(end..hi, 0);
        hi -= end;
    }
}

/// Relays frame by frame from `from` to every writer in `to` until `from` closes.
async fn pump_frames<R, W>(from: R, to: Vec<W>) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    const BUF: usize = 64 * 1024;
    let mut from = BufReader::with_capacity(BUF, from);
    let mut to: Vec<_> = to
        .into_iter()
        .map(|w| BufWriter::with_capacity(BUF, w))
        .collect();
    let mut frame = Vec::new();
    loop {
        let mut len = [0u8; 4];
        match from.read_exact(&mut len).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        let n = u32::from_be_bytes(len) as usize;
        frame.clear();
        frame.extend_from_slice(&len);
        frame.resize(4 + n, 0);
        from.read_exact(&mut frame[4..]).await?;
        for w in &mut to {
            w.write_all(&frame).await?;
        }
        if from.buffer().is_empty() {
            for w in &mut to {
                w.flush().await?;
            }
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let Some(path) = flag("--listen") else {
        eprintln!("relay: --listen PATH is required");
        std::process::exit(2);
    };
    let subs = number_flag("--subs", 1).max(1) as usize;
    let per_frame = std::env::args().any(|a| a == "--per-frame");
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    let mut down_r = Vec::new();
    let mut down_w = Vec::new();
    for _ in 0..subs {
        let (s, _) = listener.accept().await?;
        let (r, w) = s.into_split();
        down_r.push(r);
        down_w.push(w);
    }
    let (up, _) = listener.accept().await?;
    let (up_r, up_w) = up.into_split();
    let mut tasks = tokio::task::JoinSet::new();
    if subs == 1 {
        if let Some(r) = down_r.pop() {
            if per_frame {
                tasks.spawn(pump_frames(r, vec![up_w]));
            } else {
                tasks.spawn(pump(r, vec![up_w]));
            }
        }
    } else {
        drop(up_w);
        for mut r in down_r {
            tasks.spawn(async move {
                let mut sink = vec![0u8; 1 << 16];
                while r.read(&mut sink).await? > 0 {}
                Ok(())
            });
        }
    }
    let forward = if per_frame {
        pump_frames(up_r, down_w).await
    } else {
        pump(up_r, down_w).await
    };
    tasks.abort_all();
    forward
}
