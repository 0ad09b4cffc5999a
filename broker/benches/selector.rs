//! Selectors: what a SUBSCRIBE pays once (parsing) and what every message pays per selective
//! subscriber (evaluation), for three typical expressions against a message with the headers a
//! real one carries.
//!
//! Evaluation is on the publish path of topics (once per selective subscriber) and in the queue
//! actor's dispatch (once per selective consumer looked at), so its cost bounds what a
//! selective subscription adds to every message.

use criterion::{Criterion, criterion_group, criterion_main};
use stampede_broker::destination::selector::Selector;
use stampede_protocol::Headers;

const EXPRESSIONS: [(&str, &str); 3] = [
    ("equality", "region = 'eu'"),
    ("numeric_and_in", "priority > 4 AND type IN ('order', 'refund', 'return')"),
    ("like_between_null", "\"x-customer\" LIKE 'acme-%' AND amount BETWEEN 100 AND 1000 AND NOT (tag IS NULL)"),
];

fn message_headers() -> Headers {
    [
        ("destination", "/queue/orders"),
        ("content-type", "application/json"),
        ("persistent", "true"),
        ("priority", "7"),
        ("type", "refund"),
        ("region", "eu"),
        ("x-customer", "acme-4711"),
        ("amount", "250.00"),
        ("tag", "web"),
    ]
    .into_iter()
    .collect()
}

fn parse(c: &mut Criterion) {
    let mut group = c.benchmark_group("selector_parse");
    for (name, expression) in EXPRESSIONS {
        group.bench_function(name, |b| b.iter(|| Selector::parse(std::hint::black_box(expression)).unwrap()));
    }
    group.finish();
}

fn evaluate(c: &mut Criterion) {
    let headers = message_headers();
    let mut group = c.benchmark_group("selector_evaluate");
    for (name, expression) in EXPRESSIONS {
        let selector = Selector::parse(expression).unwrap();
        assert!(selector.matches(&headers), "{name} selects the sample message");
        group.bench_function(name, |b| b.iter(|| selector.matches(std::hint::black_box(&headers))));
    }
    group.finish();
}

criterion_group!(benches, parse, evaluate);
criterion_main!(benches);
