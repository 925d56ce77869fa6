//! `echo`: serves requests on `echo` (or `--topic`) by returning the payload.

use appfw_examples::flag;
use appfw_sdk::pb::HealthStatus;

#[tokio::main]
async fn main() -> Result<(), appfw_sdk::SdkError> {
    let topic = flag("--topic").unwrap_or_else(|| "echo".into());
    appfw_sdk::run(|plugin| async move {
        plugin
            .serve(&topic, |req| async move { Ok(req.payload) })
            .await?;
        plugin
            .report_health(HealthStatus::Healthy, "serving")
            .await?;
        println!("echo: serving {topic:?}");
        Ok(())
    })
    .await
}
