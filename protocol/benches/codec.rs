//! Codec throughput: decode and encode of a typical small SEND and a 4 KiB MESSAGE, and the
//! fan-out path that writes one MESSAGE to 1,000 subscribers.
//!
//! Run: `cargo bench -p stampede-protocol -- --warm-up-time 1 --measurement-time 3`.

use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use stampede_protocol::{
    Command, Decoder, Frame, Headers, Item, Limits, MessageTemplate, Version, encode, encode_to_bytes,
};

/// About 200 bytes on the wire: the headers a JMS-ish client sends, and a short JSON body.
fn small_send() -> Frame {
    Frame::new(Command::Send)
        .with_header("destination", "/queue/orders.eu-west")
        .with_header("content-type", "application/json")
        .with_header("receipt", "r-000042")
        .with_header("persistent", "true")
        .with_header("correlation-id", "c7d3e1a0")
        .with_header("priority", "4")
        .with_body(&b"{\"order\":1234,\"sku\":\"ABC-42\",\"qty\":3}"[..])
}

/// A MESSAGE with a 4 KiB binary body.
fn large_message() -> Frame {
    Frame::new(Command::Message)
        .with_header("subscription", "sub-0")
        .with_header("message-id", "T_sub-0@@session-1@@42")
        .with_header("destination", "/topic/prices")
        .with_header("content-type", "application/octet-stream")
        .with_body(Bytes::from((0..4096u32).map(|i| (i % 251) as u8).collect::<Vec<u8>>()))
}

fn bench_decode(c: &mut Criterion, name: &str, frame: &Frame) {
    let wire = encode_to_bytes(frame, Version::V1_2);
    let mut group = c.benchmark_group(format!("decode/{name}"));
    group.throughput(Throughput::Bytes(wire.len() as u64));
    group.bench_function("bytes", |b| bench_decode_once(b, &wire));
    group.throughput(Throughput::Elements(1));
    group.bench_function("frames", |b| bench_decode_once(b, &wire));
    group.finish();
}

fn bench_decode_once(b: &mut criterion::Bencher<'_>, wire: &Bytes) {
    let mut decoder = Decoder::new(Limits::default());
    b.iter_batched_ref(
        || BytesMut::from(&wire[..]),
        |buf| {
            let item = decoder.decode(buf).expect("valid");
            assert!(matches!(item, Some(Item::Frame(_))));
            black_box(item)
        },
        criterion::BatchSize::SmallInput,
    );
}

fn bench_encode(c: &mut Criterion, name: &str, frame: &Frame) {
    let len = encode_to_bytes(frame, Version::V1_2).len();
    let mut group = c.benchmark_group(format!("encode/{name}"));
    for throughput in [Throughput::Bytes(len as u64), Throughput::Elements(1)] {
        let unit = if matches!(throughput, Throughput::Bytes(_)) { "bytes" } else { "frames" };
        group.throughput(throughput);
        let mut dst = BytesMut::with_capacity(len * 2);
        group.bench_function(unit, |b| {
            b.iter(|| {
                dst.clear();
                encode(black_box(frame), Version::V1_2, &mut dst);
                black_box(dst.len())
            })
        });
    }
    group.finish();
}

fn bench_fan_out(c: &mut Criterion) {
    const SUBSCRIBERS: usize = 1000;
    let frame = large_message();
    let mut shared = Headers::new();
    shared.push("destination", "/topic/prices");
    shared.push("content-type", "application/octet-stream");
    let template = MessageTemplate::new(shared, frame.body.clone());
    let ids: Vec<(String, String)> =
        (0..SUBSCRIBERS).map(|i| (format!("sub-{i}"), format!("T_sub-{i}@@session-{i}@@42"))).collect();
    let mut one = BytesMut::new();
    template.write_to(Version::V1_2, &[("subscription", "sub-0"), ("message-id", &ids[0].1)], &mut one);

    let mut group = c.benchmark_group("fan_out/4KiB_message_x1000");
    group.throughput(Throughput::Elements(SUBSCRIBERS as u64));
    let mut dst = BytesMut::with_capacity(one.len() * SUBSCRIBERS + 64 * 1024);
    group.bench_function("write_to", |b| {
        b.iter(|| {
            dst.clear();
            for (subscription, message_id) in &ids {
                template.write_to(
                    Version::V1_2,
                    &[("subscription", subscription), ("message-id", message_id), ("ack", message_id)],
                    &mut dst,
                );
            }
            black_box(dst.len())
        })
    });
    // The vectored form: per-delivery head into a small buffer, shared part by reference count.
    let mut heads = BytesMut::with_capacity(128 * SUBSCRIBERS);
    group.bench_function("write_head+shared_part", |b| {
        b.iter(|| {
            heads.clear();
            let mut parts = 0usize;
            for (subscription, message_id) in &ids {
                template.write_head(
                    Version::V1_2,
                    &[("subscription", subscription), ("message-id", message_id), ("ack", message_id)],
                    &mut heads,
                );
                parts += template.shared_part(Version::V1_2).clone().len();
            }
            black_box((heads.len(), parts))
        })
    });
    group.finish();
}

fn codec(c: &mut Criterion) {
    let send = small_send();
    let message = large_message();
    bench_decode(c, "send_200B", &send);
    bench_decode(c, "message_4KiB", &message);
    bench_encode(c, "send_200B", &send);
    bench_encode(c, "message_4KiB", &message);
    bench_fan_out(c);
}

criterion_group!(benches, codec);
criterion_main!(benches);
