//! A queue worker: jobs are queued, then a worker takes them one at a time and acknowledges
//! each after doing it.
//!
//! ```sh
//! cargo run -p stampede-client --example worker -- tcp://127.0.0.1:61613
//! ```
//!
//! With `client-individual` acks and a prefetch of 1 the broker hands the worker one job at a
//! time and redelivers it to another worker if this one dies before the ACK. The jobs are sent
//! with a receipt and `persistent:true`, so they are stored before the worker starts.

use std::time::Duration;

use stampede_client::{AckMode, Client, ClientError, Headers, SubscribeOptions};

const JOBS: usize = 5;

#[tokio::main]
async fn main() -> Result<(), ClientError> {
    let url = std::env::args().nth(1).unwrap_or_else(|| "tcp://127.0.0.1:61613".to_owned());
    let queue = format!("/queue/examples.jobs.{}", std::process::id());

    let producer = Client::connect(&url).await?;
    let persistent: Headers = [("persistent", "true")].into_iter().collect();
    for job in 1..=JOBS {
        producer.send(&queue, format!("job {job}"), persistent.clone()).await?;
    }
    // The broker processes frames in order: this receipt covers every job above.
    producer.send_with_receipt(&queue, "last job", persistent).await?;
    producer.disconnect().await?;

    let worker = Client::connect(&url).await?;
    let options = SubscribeOptions::new().ack(AckMode::ClientIndividual).prefetch(1);
    let mut jobs = worker.subscribe(&queue, options).await?;
    for _ in 0..=JOBS {
        let job = jobs.recv_timeout(Duration::from_secs(5)).await?;
        println!("done: {}", job.body_str().unwrap_or("<binary>"));
        worker.ack(&job).await?;
    }
    worker.disconnect().await
}
