//! `echo`: serves requests on `echo` (or `--topic`) by returning the payload, preceded by the
//! `prefix` from its settings (`[plugins.settings] prefix = "..."`), which it takes live when the
//! config changes. With `--subscribe PATTERN` it also prints every message published on matching
//! topics, in the order they arrive. `--start-delay 300ms` waits that long before connecting (a
//! slow start, for on-demand tests).

use std::sync::{Arc, Mutex, PoisonError};

use appfw_examples::{duration_flag, flag};
use appfw_sdk::pb::HealthStatus;
use appfw_sdk::{Plugin, RequestError};

fn prefix_of(settings: &[u8]) -> Result<String, RequestError> {
    if settings.is_empty() {
        return Ok(String::new());
    }
    let v: serde_json::Value = serde_json::from_slice(settings)
        .map_err(|e| RequestError::permanent("bad_settings", e.to_string()))?;
    match v.get("prefix") {
        None => Ok(String::new()),
        Some(serde_json::Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(RequestError::permanent(
            "bad_settings",
            format!("prefix must be a string, got {other}"),
        )),
    }
}

#[tokio::main]
async fn main() -> Result<(), appfw_sdk::SdkError> {
    let topic = flag("--topic").unwrap_or_else(|| "echo".into());
    let subscribe = flag("--subscribe");
    if let Some(d) = duration_flag("--start-delay", None) {
        tokio::time::sleep(d).await;
    }
    let prefix = Arc::new(Mutex::new(String::new()));
    let p2 = Arc::clone(&prefix);
    let plugin = Plugin::builder()
        .on_config(move |settings| {
            let new = prefix_of(settings)?;
            println!("echo: prefix is now {new:?}");
            *p2.lock().unwrap_or_else(PoisonError::into_inner) = new;
            Ok(())
        })
        .connect()
        .await?;
    *prefix.lock().unwrap_or_else(PoisonError::into_inner) =
        prefix_of(&plugin.settings_json()).unwrap_or_default();
    let p3 = Arc::clone(&prefix);
    let served = plugin.metrics().counter(
        "echo_requests_total",
        "Requests echoed",
        &[("topic", &topic)],
    );
    plugin
        .serve(&topic, move |req| {
            let p = p3.lock().unwrap_or_else(PoisonError::into_inner).clone();
            served.inc();
            async move {
                let mut out = p.into_bytes();
                out.extend_from_slice(&req.payload);
                Ok(out.into())
            }
        })
        .await?;
    if let Some(pattern) = subscribe {
        plugin
            .subscribe(&pattern, |msg| {
                // Printed before the handler task starts: in arrival order.
                println!(
                    "echo: got {} from {}: {}",
                    msg.topic,
                    msg.sender,
                    String::from_utf8_lossy(&msg.payload)
                );
                async {}
            })
            .await?;
    }
    plugin
        .report_health(HealthStatus::Healthy, "serving")
        .await?;
    println!("echo: serving {topic:?}");
    plugin.run_until_shutdown().await
}
