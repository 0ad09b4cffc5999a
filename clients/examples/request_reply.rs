//! Request/reply: a service answers requests on a queue; a caller sends requests and waits for
//! each answer with a timeout.
//!
//! ```sh
//! cargo run -p stampede-client --example request_reply -- tcp://127.0.0.1:61613
//! ```
//!
//! `Client::request` asks for the reply on a private temporary queue (`reply-to`) and pairs it
//! with the request by `correlation-id`; `Client::reply` answers where the request asked.

use std::time::Duration;

use stampede_client::{Client, ClientError, Headers, SubscribeOptions};

#[tokio::main]
async fn main() -> Result<(), ClientError> {
    let url = std::env::args().nth(1).unwrap_or_else(|| "tcp://127.0.0.1:61613".to_owned());
    let service_queue = format!("/queue/examples.uppercase.{}", std::process::id());

    // The service: answers three requests, then stops.
    let service = Client::connect(&url).await?;
    let mut requests = service.subscribe(&service_queue, SubscribeOptions::new()).await?;
    let server = tokio::spawn(async move {
        for _ in 0..3 {
            let request = requests.recv_timeout(Duration::from_secs(5)).await?;
            let answer = request.body_str().unwrap_or_default().to_uppercase();
            service.reply(&request, answer, Headers::new()).await?;
        }
        service.disconnect().await
    });

    // The caller.
    let caller = Client::connect(&url).await?;
    for word in ["hello", "stomp", "world"] {
        let reply = caller.request(&service_queue, word, Headers::new(), Duration::from_secs(5)).await?;
        println!("{word} -> {}", reply.body_str().unwrap_or("<binary>"));
    }
    caller.disconnect().await?;
    server.await.expect("the service task ran to its end")
}
