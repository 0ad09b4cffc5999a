//! Publish/subscribe: one subscriber on a topic, three messages published, each received.
//!
//! ```sh
//! cargo run -p stampede-client --example pubsub -- tcp://127.0.0.1:61613
//! ```
//!
//! A topic delivers to whoever is subscribed at the time of publishing, so the subscription is
//! made (and confirmed by the broker) before the first publish.

use std::time::Duration;

use stampede_client::{Client, ClientError, SubscribeOptions};

#[tokio::main]
async fn main() -> Result<(), ClientError> {
    let url = std::env::args().nth(1).unwrap_or_else(|| "tcp://127.0.0.1:61613".to_owned());
    let client = Client::connect(&url).await?;
    let mut news = client.subscribe("/topic/examples.news", SubscribeOptions::new()).await?;
    for headline in ["markets up", "rain tomorrow", "cat elected mayor"] {
        client.publish("/topic/examples.news", headline).await?;
    }
    for _ in 0..3 {
        let message = news.recv_timeout(Duration::from_secs(5)).await?;
        println!("received on {}: {}", message.destination, message.body_str().unwrap_or("<binary>"));
    }
    client.disconnect().await
}
