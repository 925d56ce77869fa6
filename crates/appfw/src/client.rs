//! A small typed client of the host's HTTP API, over the data directory's Unix socket (default)
//! or TCP. Built on hyper directly: the CLI needs HTTP/1.1 on a Unix socket, which the usual
//! high-level clients do not offer.

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// Where the API is.
#[derive(Clone, Debug)]
pub enum Endpoint {
    /// A Unix socket path.
    Unix(PathBuf),
    /// `host:port` over TCP.
    Tcp(String),
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The host is not reachable.
    #[error(
        "cannot reach the appfw host at {endpoint}: {reason} (is `appfw run` running with this data directory?)"
    )]
    Unreachable {
        /// Where we tried.
        endpoint: String,
        /// Why.
        reason: String,
    },
    /// The host answered with an error.
    #[error("{message} ({code}, HTTP {status})")]
    Api {
        /// HTTP status.
        status: u16,
        /// Stable error code.
        code: String,
        /// Message.
        message: String,
        /// Every problem, for a refused config.
        issues: Vec<String>,
    },
    /// The answer was not what the API promises.
    #[error("unexpected answer from the host: {0}")]
    Protocol(String),
}

/// The client.
#[derive(Clone, Debug)]
pub struct Client {
    endpoint: Endpoint,
    token: Option<String>,
    timeout: Duration,
    accept_errors: bool,
}

impl Client {
    /// A client of `endpoint` presenting `token`.
    pub fn new(endpoint: Endpoint, token: Option<String>) -> Self {
        Self {
            endpoint,
            token,
            timeout: Duration::from_secs(330),
            accept_errors: false,
        }
    }

    fn describe(&self) -> String {
        match &self.endpoint {
            Endpoint::Unix(p) => p.display().to_string(),
            Endpoint::Tcp(a) => format!("http://{a}"),
        }
    }

    /// GET `path`.
    pub async fn get(&self, path: &str) -> Result<Value, ClientError> {
        self.call("GET", path).await
    }

    /// GET `path`, returning the JSON body whatever the status (for `/healthz`, whose 503 is a
    /// report, not a failure).
    pub async fn get_report(&self, path: &str) -> Result<Value, ClientError> {
        let mut c = self.clone();
        c.accept_errors = true;
        c.call_with_body("GET", path, String::new()).await
    }

    /// POST `path` with no body.
    pub async fn post(&self, path: &str) -> Result<Value, ClientError> {
        self.call("POST", path).await
    }

    async fn call(&self, method: &str, path: &str) -> Result<Value, ClientError> {
        self.call_with_body(method, path, String::new()).await
    }

    /// A request with a text body.
    pub async fn call_with_body(
        &self,
        method: &str,
        path: &str,
        body: String,
    ) -> Result<Value, ClientError> {
        tokio::time::timeout(self.timeout, self.call_inner(method, path, body))
            .await
            .map_err(|_| ClientError::Unreachable {
                endpoint: self.describe(),
                reason: format!("no answer within {:?}", self.timeout),
            })?
    }

    /// Connects and sends a request; the response (its body not read yet) and the connection's
    /// task.
    async fn open(&self, method: &str, path: &str, body: String) -> Result<Sent, ClientError> {
        let unreachable = |reason: String| ClientError::Unreachable {
            endpoint: self.describe(),
            reason,
        };
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, "localhost")
            // Events name the CLI as the one who asked.
            .header("x-appfw-client", "cli");
        if let Some(t) = &self.token {
            req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = req
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        match &self.endpoint {
            Endpoint::Unix(p) => {
                let s = tokio::net::UnixStream::connect(p)
                    .await
                    .map_err(|e| unreachable(e.to_string()))?;
                send(TokioIo::new(s), req).await.map_err(unreachable)
            }
            Endpoint::Tcp(a) => {
                let s = tokio::net::TcpStream::connect(a)
                    .await
                    .map_err(|e| unreachable(e.to_string()))?;
                send(TokioIo::new(s), req).await.map_err(unreachable)
            }
        }
    }

    async fn call_inner(
        &self,
        method: &str,
        path: &str,
        body: String,
    ) -> Result<Value, ClientError> {
        let (resp, driver) = self.open(method, path, body).await?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| self.unreachable(e.to_string()))?
            .to_bytes();
        // The request sender is gone and the body read: the connection task ends now.
        let _ = driver.await;
        let value: Value = serde_json::from_slice(&body)
            .map_err(|e| ClientError::Protocol(format!("HTTP {status}, body is not JSON ({e})")))?;
        if status >= 400 && !self.accept_errors {
            return Err(api_error(status, &value));
        }
        Ok(value)
    }

    fn unreachable(&self, reason: String) -> ClientError {
        ClientError::Unreachable {
            endpoint: self.describe(),
            reason,
        }
    }

    /// GET a stream of server-sent events at `path`, calling `on_event(type, data)` for each
    /// (`message` when the event names no type) until the stream ends.
    pub async fn stream(
        &self,
        path: &str,
        mut on_event: impl FnMut(&str, &str),
    ) -> Result<(), ClientError> {
        let (resp, driver) = self.open("GET", path, String::new()).await?;
        let status = resp.status().as_u16();
        let mut body = resp.into_body();
        if status >= 400 {
            let bytes = body
                .collect()
                .await
                .map_err(|e| self.unreachable(e.to_string()))?
                .to_bytes();
            let value: Value = serde_json::from_slice(&bytes).unwrap_or_default();
            return Err(api_error(status, &value));
        }
        let mut buf: Vec<u8> = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| self.unreachable(e.to_string()))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            buf.extend_from_slice(&data);
            // An event ends at an empty line.
            while let Some(end) = find(&buf, b"\n\n") {
                let block = String::from_utf8_lossy(&buf[..end]).into_owned();
                buf.drain(..end + 2);
                let mut kind = "message";
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(t) = line.strip_prefix("event:") {
                        kind = t.trim();
                    } else if let Some(d) = line.strip_prefix("data:") {
                        if !data.is_empty() {
                            data.push('\n');
                        }
                        data.push_str(d.strip_prefix(' ').unwrap_or(d));
                    }
                }
                if !data.is_empty() {
                    on_event(kind, &data);
                }
            }
        }
        let _ = driver.await;
        Ok(())
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The error an API error body describes.
fn api_error(status: u16, value: &Value) -> ClientError {
    let err = &value["error"];
    ClientError::Api {
        status,
        code: err["code"].as_str().unwrap_or("unknown").to_string(),
        message: err["message"].as_str().unwrap_or("no message").to_string(),
        issues: err["issues"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|i| i.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default(),
    }
}

type Sent = (
    hyper::Response<Incoming>,
    tokio::task::JoinHandle<hyper::Result<()>>,
);

async fn send<T>(io: T, req: Request<Full<Bytes>>) -> Result<Sent, String>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    let driver = tokio::spawn(conn);
    let resp = sender.send_request(req).await;
    drop(sender);
    match resp {
        Ok(r) => Ok((r, driver)),
        Err(e) => {
            driver.abort();
            Err(e.to_string())
        }
    }
}
