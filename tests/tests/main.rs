//! Every integration test in one binary: one link of the broker instead of one per file, which
//! was most of the test build time and target size. Each file below is one area of behaviour;
//! run one with `cargo nextest run -p stampede-tests -E 'test(/^security_names::/)'`.

mod backpressure;
mod bridges;
mod cli;
mod client_examples;
mod client_features;
mod cluster;
mod cluster_queues;
mod connection_faults;
mod crash;
mod damaged_store;
mod delayed;
mod deploy;
mod disk_full;
mod durability;
mod failing_writes;
mod fallback;
mod features;
mod first_hour;
mod fsync;
mod hostile;
mod idle_expiry;
mod management_api;
mod messaging;
mod operations;
mod power_loss;
mod reload;
mod replay;
mod resume;
mod security;
mod security_auth;
mod security_frames;
mod security_names;
mod sessions;
mod websocket;
