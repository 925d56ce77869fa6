//! `echo`: serves requests on `echo` (or `--topic`) by returning the payload. With
//! `--subscribe PATTERN` it also prints every message published on matching topics.

use appfw_examples::flag;
use appfw_sdk::pb::HealthStatus;

#[tokio::main]
async fn main() -> Result<(), appfw_sdk::SdkError> {
    let topic = flag("--topic").unwrap_or_else(|| "echo".into());
    let subscribe = flag("--subscribe");
    appfw_sdk::run(|plugin| async move {
        plugin
            .serve(&topic, |req| async move { Ok(req.payload) })
            .await?;
        if let Some(pattern) = subscribe {
            plugin
                .subscribe(&pattern, |msg| async move {
                    println!(
                        "echo: got {} from {}: {}",
                        msg.topic,
                        msg.sender,
                        String::from_utf8_lossy(&msg.payload)
                    );
                })
                .await?;
        }
        plugin
            .report_health(HealthStatus::Healthy, "serving")
            .await?;
        println!("echo: serving {topic:?}");
        Ok(())
    })
    .await
}
