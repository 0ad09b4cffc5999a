//! The router's fan-out path: one publish to 1, 100 and 10,000 in-process subscribers, and the
//! per-delivery encoding a connection does when it writes them.
//!
//! Measures what the broker does per publish on the publisher's task (look up the topic, push a
//! delivery into every subscriber's outbox) and per delivery on the subscriber's task (stamp the
//! per-subscriber headers onto the shared encoding), without sockets, so a regression shows up
//! before the end-to-end harness is run.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use stampede_broker::destination::outbox::{Outbox, SlowConsumerPolicy};
use stampede_broker::destination::queue::QueueSettings;
use stampede_broker::destination::router::Router;
use stampede_broker::destination::topic::{Sink, TopicSubscriber};
use stampede_protocol::{Headers, MessageTemplate, Version};

fn template(body_len: usize) -> Arc<MessageTemplate> {
    let headers: Headers =
        [("destination", "/topic/bench"), ("content-type", "application/octet-stream")].into_iter().collect();
    Arc::new(MessageTemplate::new(headers, Bytes::from(vec![b'x'; body_len])))
}

fn publish(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut group = c.benchmark_group("topic_publish");
    for subscribers in [1usize, 100, 10_000] {
        let router = Router::new(QueueSettings::default());
        let outboxes: Vec<Arc<Outbox>> = (0..subscribers).map(|_| Outbox::new(usize::MAX / 4)).collect();
        for (i, outbox) in outboxes.iter().enumerate() {
            let sink = Sink::Connection {
                subscription: i as u64,
                outbox: Arc::clone(outbox),
                policy: SlowConsumerPolicy::Disconnect,
            };
            let subscriber = Arc::new(TopicSubscriber { id: router.next_id(), sink, selector: None });
            runtime.block_on(router.subscribe_topic("bench", subscriber)).expect("no cluster, no failure");
        }
        let message = template(128);
        let mut drained = VecDeque::new();
        group.throughput(Throughput::Elements(subscribers as u64));
        group.bench_function(format!("{subscribers}_subscribers_128B"), |b| {
            b.iter_batched(
                || {
                    for outbox in &outboxes {
                        outbox.take_all(&mut drained);
                        drained.clear();
                    }
                },
                |()| {
                    runtime.block_on(router.publish_topic(
                        "bench",
                        &message,
                        stampede_broker::destination::router::TopicMessage::transient(1),
                    ))
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

fn encode_delivery(c: &mut Criterion) {
    let mut group = c.benchmark_group("delivery_encode");
    for body in [128usize, 1024, 16 * 1024] {
        let message = template(body);
        let mut out = BytesMut::with_capacity(64 * 1024);
        group.throughput(Throughput::Elements(1));
        group.bench_function(format!("{body}B"), |b| {
            b.iter(|| {
                out.clear();
                message.write_to(
                    Version::V1_2,
                    &[("subscription", "sub-0"), ("message-id", "1795230736334100"), ("ack", "17")],
                    &mut out,
                );
                out.len()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, publish, encode_delivery);
criterion_main!(benches);
