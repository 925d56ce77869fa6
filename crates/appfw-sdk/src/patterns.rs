//! Typed helpers over the bus: topics and services whose payloads are Rust values, a pipeline
//! stage, and fan-out / fan-in with one deadline.
//!
//! Payloads stay opaque bytes on the wire; a [`Codec`] turns values into bytes and back and
//! names the content type it sets. [`Protobuf`] works with any `prost` message; [`Json`] (feature
//! `json`) with any serde type.
//!
//! ```no_run
//! # #[cfg(feature = "json")]
//! # async fn f(plugin: appfw_sdk::Plugin) -> Result<(), appfw_sdk::SdkError> {
//! use appfw_sdk::patterns::{Json, Service, Topic};
//! use std::time::Duration;
//!
//! #[derive(serde::Serialize, serde::Deserialize)]
//! struct Quote { pair: String, price: f64 }
//!
//! let quotes: Topic<Quote, Json> = Topic::new("prices.quotes");
//! quotes.publish(&plugin, &Quote { pair: "EURUSD".into(), price: 1.08 }).await?;
//!
//! let square: Service<u64, u64, Json> = Service::new("math.square");
//! square.serve(&plugin, |x, _msg| async move { Ok(x * x) }).await?;
//! let nine = square.request(&plugin, &3, Duration::from_secs(1)).await;
//! # let _ = nine; Ok(()) }
//! ```

use std::future::Future;
use std::marker::PhantomData;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::join_all;

use crate::{Message, Plugin, RequestError, SdkError, SubscribeOptions, SubscriptionId};

/// Turns values of `T` into payloads and back.
pub trait Codec<T>: Send + Sync + 'static {
    /// The `content_type` set on what is sent.
    const CONTENT_TYPE: &'static str;
    /// Encodes a value.
    fn encode(value: &T) -> Result<Bytes, RequestError>;
    /// Decodes a payload; a bad payload is a permanent `bad_request`.
    fn decode(payload: &[u8]) -> Result<T, RequestError>;
}

/// Protobuf payloads (any `prost` message).
#[derive(Debug)]
pub struct Protobuf;

impl<T: prost::Message + Default> Codec<T> for Protobuf {
    const CONTENT_TYPE: &'static str = "application/x-protobuf";
    fn encode(value: &T) -> Result<Bytes, RequestError> {
        Ok(Bytes::from(value.encode_to_vec()))
    }
    fn decode(payload: &[u8]) -> Result<T, RequestError> {
        T::decode(payload).map_err(|e| RequestError::permanent("bad_request", e.to_string()))
    }
}

/// JSON payloads (any serde type).
#[cfg(feature = "json")]
#[derive(Debug)]
pub struct Json;

#[cfg(feature = "json")]
impl<T: serde::Serialize + serde::de::DeserializeOwned> Codec<T> for Json {
    const CONTENT_TYPE: &'static str = "application/json";
    fn encode(value: &T) -> Result<Bytes, RequestError> {
        serde_json::to_vec(value)
            .map(Bytes::from)
            .map_err(|e| RequestError::permanent("bad_request", e.to_string()))
    }
    fn decode(payload: &[u8]) -> Result<T, RequestError> {
        serde_json::from_slice(payload)
            .map_err(|e| RequestError::permanent("bad_request", e.to_string()))
    }
}

/// A topic whose messages are values of `T` encoded with `C`.
#[derive(Debug)]
pub struct Topic<T, C> {
    name: String,
    _types: PhantomData<fn() -> (T, C)>,
}

impl<T, C> Clone for Topic<T, C> {
    fn clone(&self) -> Self {
        Self {
            name: self.name.clone(),
            _types: PhantomData,
        }
    }
}

impl<T: Send + 'static, C: Codec<T>> Topic<T, C> {
    /// The topic `name` (a pattern when subscribing).
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_string(),
            _types: PhantomData,
        }
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Publishes `value` (encoded before the future is returned, so it is not borrowed across
    /// the send).
    pub fn publish<'a>(
        &'a self,
        plugin: &'a Plugin,
        value: &T,
    ) -> impl Future<Output = Result<(), SdkError>> + Send + 'a {
        let encoded = C::encode(value).map_err(|error| SdkError::Encode {
            topic: self.name.clone(),
            error,
        });
        async move {
            plugin
                .publish_typed(&self.name, encoded?, C::CONTENT_TYPE)
                .await
        }
    }

    /// Calls `handler` with every message decoded; one that does not decode is dropped and
    /// counted in the plugin's series `sdk_messages_undecodable_total`.
    pub async fn subscribe<F, Fut>(
        &self,
        plugin: &Plugin,
        options: SubscribeOptions,
        handler: F,
    ) -> Result<SubscriptionId, SdkError>
    where
        F: Fn(T, Message) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let bad = plugin.metrics().counter(
            "sdk_messages_undecodable",
            "Messages whose payload did not decode as the topic's type",
            &[("topic", &self.name)],
        );
        let handler = std::sync::Arc::new(handler);
        plugin
            .subscribe_with(&self.name, options, move |msg| {
                let handler = std::sync::Arc::clone(&handler);
                let bad = bad.clone();
                async move {
                    match C::decode(&msg.payload) {
                        Ok(v) => handler(v, msg).await,
                        Err(_) => bad.inc(),
                    }
                }
            })
            .await
    }
}

/// The types a service only names (`fn() -> ..`: neither owned nor borrowed, always Send).
type Types<Req, Resp, C> = PhantomData<fn() -> (Req, Resp, C)>;

/// A request/reply service: requests of `Req`, replies of `Resp`, both encoded with `C`.
#[derive(Debug)]
pub struct Service<Req, Resp, C> {
    name: String,
    _types: Types<Req, Resp, C>,
}

impl<Req, Resp, C> Clone for Service<Req, Resp, C> {
    fn clone(&self) -> Self {
        Self {
            name: self.name.clone(),
            _types: PhantomData,
        }
    }
}

impl<Req, Resp, C> Service<Req, Resp, C>
where
    Req: Send + 'static,
    Resp: Send + 'static,
    C: Codec<Req> + Codec<Resp>,
{
    /// The service on topic `name`.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_string(),
            _types: PhantomData,
        }
    }

    /// Its topic.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sends `req` and decodes the reply, within `timeout`. The returned future is a request
    /// in flight: keep several and await them together to overlap their round trips.
    pub fn request<'a>(
        &'a self,
        plugin: &'a Plugin,
        req: &Req,
        timeout: Duration,
    ) -> impl Future<Output = Result<Resp, RequestError>> + Send + 'a {
        let encoded = <C as Codec<Req>>::encode(req);
        async move {
            let reply = plugin.request(&self.name, encoded?, timeout).await?;
            <C as Codec<Resp>>::decode(&reply)
        }
    }

    /// Serves the topic: `handler` gets each request decoded (one that does not decode is
    /// answered with a permanent `bad_request` without calling it) and its `Ok` is the reply.
    pub async fn serve<F, Fut>(
        &self,
        plugin: &Plugin,
        handler: F,
    ) -> Result<SubscriptionId, SdkError>
    where
        F: Fn(Req, Message) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Resp, RequestError>> + Send + 'static,
    {
        let handler = std::sync::Arc::new(handler);
        plugin
            .serve(&self.name, move |msg| {
                let handler = std::sync::Arc::clone(&handler);
                async move {
                    let req = <C as Codec<Req>>::decode(&msg.payload)?;
                    let resp = handler(req, msg).await?;
                    <C as Codec<Resp>>::encode(&resp)
                }
            })
            .await
    }
}

/// A pipeline stage: takes each message of `input` (sharing them with the other members of
/// queue group `group`, so copies of the stage spread the load), maps it with `f` and publishes
/// what `f` returns (if anything) on `output`. The input's overflow policy is `block`, so a slow
/// stage slows its producers rather than losing messages.
pub async fn stage<I, O, CI, CO, F, Fut>(
    plugin: &Plugin,
    input: &Topic<I, CI>,
    group: &str,
    output: &Topic<O, CO>,
    f: F,
) -> Result<SubscriptionId, SdkError>
where
    I: Send + 'static,
    O: Send + 'static,
    CI: Codec<I>,
    CO: Codec<O>,
    F: Fn(I) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Option<O>> + Send + 'static,
{
    let out = output.clone();
    let p = plugin.clone();
    let f = std::sync::Arc::new(f);
    input
        .subscribe(
            plugin,
            SubscribeOptions::default().queue_group(group),
            move |v, _msg| {
                let (out, p, f) = (out.clone(), p.clone(), std::sync::Arc::clone(&f));
                async move {
                    if let Some(o) = f(v).await {
                        // The handler's trace context is current here, so the output continues
                        // the input's trace.
                        let _ = out.publish(&p, &o).await;
                    }
                }
            },
        )
        .await
}

/// Fan-out / fan-in: sends every `(topic, payload)` request at once and waits for all replies,
/// at most `timeout` in all. Results come in the order of `requests`; one without a reply by
/// then is a temporary `deadline_exceeded`.
pub async fn gather<P>(
    plugin: &Plugin,
    requests: impl IntoIterator<Item = (String, P)>,
    timeout: Duration,
) -> Vec<Result<Bytes, RequestError>>
where
    P: Into<Bytes>,
{
    let calls = requests
        .into_iter()
        .map(|(topic, payload)| {
            let p = plugin.clone();
            let payload = payload.into();
            async move { p.request(&topic, payload, timeout).await }
        })
        .collect::<Vec<_>>();
    join_all(calls).await
}

/// [`gather`] for a typed service: the same request type to several instances' topics, or
/// several requests to one topic; replies decoded.
pub async fn gather_typed<Req, Resp, C>(
    plugin: &Plugin,
    service: &Service<Req, Resp, C>,
    requests: &[Req],
    timeout: Duration,
) -> Vec<Result<Resp, RequestError>>
where
    Req: Send + 'static,
    Resp: Send + 'static,
    C: Codec<Req> + Codec<Resp>,
{
    let calls = requests
        .iter()
        .map(|r| service.request(plugin, r, timeout))
        .collect::<Vec<_>>();
    join_all(calls).await
}
