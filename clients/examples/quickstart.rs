//! The README's Rust quick start, verbatim between the markers (a test checks they agree): ask
//! the jobs queue for an answer, as the browser and Python snippets there do.
//!
//! ```sh
//! cargo run -p stampede-client --example quickstart -- tcp://127.0.0.1:61613
//! ```

// quickstart-rust-begin
use stampede_client::{Client, Headers};
use std::time::Duration;

#[tokio::main]
async fn main() -> Result<(), stampede_client::ClientError> {
    let url = std::env::args().nth(1).unwrap_or_else(|| "tcp://127.0.0.1:61613".into());
    let client = Client::connect(&url).await?;
    client.publish("/topic/chat", "hello from Rust").await?;
    let answer = client.request("/queue/jobs", "resize photo.jpg", Headers::new(), Duration::from_secs(5)).await?;
    println!("answer: {}", answer.body_str().unwrap_or_default());
    client.disconnect().await
}
// quickstart-rust-end
